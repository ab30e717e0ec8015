"""Run with `python3 -m unittest`: the handler is a plain function, tested without the platform."""

import types
import unittest

from app import handler


class HandlerTest(unittest.TestCase):
    def test_greets_by_name(self):
        reply = handler({"name": "Ada"}, types.SimpleNamespace(aws_request_id="test-1"))
        self.assertEqual(reply, {"message": "Hello, Ada!", "requestId": "test-1"})

    def test_greets_the_world_when_no_name_is_given(self):
        reply = handler({}, types.SimpleNamespace(aws_request_id="test-2"))
        self.assertEqual(reply["message"], "Hello, world!")


if __name__ == "__main__":
    unittest.main()
