"""Ships a priced order: runs for every `com.example.order.priced` the pricer puts on the broker.

Delivery is at least once: a retried event arrives again with the same CloudEvent id
(`context.cloudevent["id"]`), which is what a real shipper would deduplicate on.
"""


def handler(order, context):
    print(f"shipping {order['id']} for {order['total']:.2f} (event {context.cloudevent['id']})", flush=True)
    return None
