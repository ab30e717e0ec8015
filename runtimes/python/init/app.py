"""{{name}}: a knative-lambda function.

`event` is the CloudEvent's data; what the handler returns is the reply's data (None: 202, no
reply); a raised exception answers 500 with its message. `context` holds the request id (the
event's id), the function's name, the event's attributes and the time left
(`context.get_remaining_time_in_millis()`).
"""


def handler(event, context):
    name = (event or {}).get("name", "world")
    return {"message": f"Hello, {name}!", "requestId": context.aws_request_id}
