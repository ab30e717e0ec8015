// Prices an order. It runs for every `com.example.order.created` on the broker; what it returns
// goes back on the broker as `com.example.order.priced` (its Trigger's replyType), with source
// /functions/pricer, which is what the shipper subscribes to.
exports.handler = async (order, context) => {
  const subtotal = (order.items || []).reduce((sum, item) => sum + item.qty * item.price, 0);
  const tax = Math.round(subtotal * Number(process.env.TAX_RATE || 0) * 100) / 100;
  console.log(`priced ${order.id}: ${subtotal} + ${tax} tax (event ${context.cloudevent.id})`);
  return { id: order.id, subtotal, tax, total: subtotal + tax };
};
