"""An AWS-Lambda-style Python handler with a dependency (six, installed at build time)."""
import six


def handler(event, context):
    name = (event or {}).get("name", "world")
    return {"message": f"Hello, {name}!", "six": six.__version__, "requestId": context.aws_request_id}
