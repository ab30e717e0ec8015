// An AWS-Lambda-style Node.js handler: the event is the CloudEvent's data, the return value
// becomes the reply event's data.
exports.handler = async (event, context) => {
  const name = (event && event.name) || 'world';
  return { message: `${process.env.GREETING || 'Hello'}, ${name}!`, requestId: context.awsRequestId };
};
