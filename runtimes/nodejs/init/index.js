// {{name}}: a knative-lambda function. `event` is the CloudEvent's data; what the handler returns
// is the reply's data (nothing: 202, no reply); a thrown error answers 500 with its message.
// `context` holds the request id (the event's id), the function's name, the event's attributes
// and the time left (`context.getRemainingTimeInMillis()`).
exports.handler = async (event, context) => {
  const name = (event && event.name) || 'world';
  return { message: `Hello, ${name}!`, requestId: context.awsRequestId };
};
