// Run with `node --test`: the handler is a plain function, tested without the platform.
const test = require('node:test');
const assert = require('node:assert');
const { handler } = require('./index.js');

test('greets by name', async () => {
  const reply = await handler({ name: 'Ada' }, { awsRequestId: 'test-1' });
  assert.deepStrictEqual(reply, { message: 'Hello, Ada!', requestId: 'test-1' });
});

test('greets the world when no name is given', async () => {
  const reply = await handler({}, { awsRequestId: 'test-2' });
  assert.strictEqual(reply.message, 'Hello, world!');
});
