// knative-lambda Node.js shim: serves a Lambda-style handler as a CloudEvents HTTP service.
// See runtimes/README.md for the contract. No dependencies beyond Node's standard library.
'use strict';
const http = require('node:http');
const path = require('node:path');
const { pathToFileURL } = require('node:url');
const fs = require('node:fs');

const maxBody = 1024 * 1024;
// Read from the environment when the function is known: at start, or when a warm process is
// claimed (see claim below).
let port, root, handlerSpec, functionName, timeoutMs;

function configure() {
  port = Number(process.env.PORT || 8080);
  root = process.env.KLAMBDA_FUNCTION_ROOT || process.cwd();
  handlerSpec = process.env.KLAMBDA_HANDLER || 'index.handler';
  functionName = process.env.KLAMBDA_FUNCTION_NAME || 'function';
  timeoutMs = Number(process.env.KLAMBDA_TIMEOUT_SECONDS || 30) * 1000;
}

// The local runner's warm pool (KLAMBDA_POOL=1): this process started before any function was
// chosen, Node.js and this shim loaded, and waits for one JSON line on stdin naming the function:
// {"env": {...}, "cwd": "...", "uid": n|null}. It takes that environment and directory, drops
// to the function's user and group (it was started as root for this only), and serves as if it
// had been started for that function. stdin stays open: its end means the runner is gone (the
// parent-death signal does not survive the change of user), and the process exits.
function claim() {
  return new Promise((resolve) => {
    let buffered = '';
    const onData = (chunk) => {
      buffered += chunk;
      const newline = buffered.indexOf('\n');
      if (newline < 0) return;
      process.stdin.off('data', onData);
      resolve(JSON.parse(buffered.slice(0, newline)));
    };
    process.stdin.setEncoding('utf8');
    process.stdin.on('data', onData);
    process.stdin.on('end', () => process.exit(0));
  }).then(({ env, cwd, uid }) => {
    for (const name of Object.keys(process.env)) delete process.env[name];
    Object.assign(process.env, env);
    process.chdir(cwd);
    if (uid !== null && uid !== undefined) {
      process.setgroups([]);
      process.setgid(uid);
      process.setuid(uid);
    }
  });
}

async function loadHandler() {
  const dot = handlerSpec.lastIndexOf('.');
  const modulePath = handlerSpec.slice(0, dot);
  const exportName = handlerSpec.slice(dot + 1);
  const candidates = ['.js', '.mjs', '.cjs'].map((ext) => path.join(root, modulePath + ext));
  const file = candidates.find((f) => fs.existsSync(f));
  if (!file) throw new Error(`handler module not found: ${candidates.join(', ')}`);
  const mod = await import(pathToFileURL(file).href);
  const fn = mod[exportName] ?? (mod.default && mod.default[exportName]);
  if (typeof fn !== 'function') throw new Error(`${file} does not export a function named ${exportName}`);
  return fn;
}

function problem(res, status, title, detail, extra = {}) {
  res.writeHead(status, { 'content-type': 'application/problem+json' });
  res.end(JSON.stringify({ type: 'about:blank', title, status, detail, ...extra }));
}

// CloudEvents binary mode: percent-encode space, '"', '%' and every byte outside U+0021-U+007E.
function encodeHeader(value) {
  let out = '';
  for (const byte of Buffer.from(String(value), 'utf8')) {
    out += byte > 0x20 && byte < 0x7f && byte !== 0x22 && byte !== 0x25
      ? String.fromCharCode(byte)
      : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

function decodeHeader(value) {
  try { return decodeURIComponent(value); } catch { return value; }
}

// Returns { attributes, data } or throws with a reason.
function readEvent(req, body) {
  const contentType = req.headers['content-type'] || '';
  if (contentType.startsWith('application/cloudevents-batch')) throw new Error('batch mode is not supported');
  if (contentType.startsWith('application/cloudevents')) {
    const { data, data_base64: dataBase64, ...attributes } = JSON.parse(body.toString('utf8'));
    return { attributes, data: dataBase64 !== undefined ? Buffer.from(dataBase64, 'base64') : data };
  }
  const attributes = {};
  for (const [name, value] of Object.entries(req.headers)) {
    if (name.startsWith('ce-')) attributes[name.slice(3)] = decodeHeader(value);
  }
  let data;
  if (body.length > 0) {
    data = contentType === '' || contentType.includes('json') ? JSON.parse(body.toString('utf8')) : body.toString('utf8');
  }
  return { attributes, data };
}

// One JSON line on stderr per failed invocation, with its request id, so `klambda logs` (and a
// cluster's log pipeline) ties the failure to the event: what Lambda writes as "ERROR RequestId".
function logFailure(requestId, kind, error) {
  const stack = error && error.stack ? String(error.stack).split('\n').slice(0, 8) : undefined;
  console.error(JSON.stringify({ level: 'error', requestId, kind, message: String((error && error.message) || error), stack }));
}

function withTimeout(promise) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(Object.assign(new Error(`handler ran past ${timeoutMs} ms`), { timeout: true })), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main() {
  if (process.env.KLAMBDA_POOL === '1') await claim();
  configure();
  const handler = await loadHandler();
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/health') {
      res.writeHead(200, { 'content-type': 'application/json' });
      return res.end('{"status":"alive"}');
    }
    // The subscriber URI may say what becomes of the reply (a Knative Trigger cannot):
    // ?replyType=T types it T; ?reply=none drops it (an asynchronous invocation's result).
    const target = new URL(req.url, 'http://shim');
    if (req.method !== 'POST' || target.pathname !== '/') return problem(res, 405, 'Method not allowed', 'POST / with a CloudEvent');
    const replyType = target.searchParams.get('replyType');
    const dropReply = target.searchParams.get('reply') === 'none';
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > maxBody) { problem(res, 413, 'Payload too large', `limit ${maxBody} bytes`); req.destroy(); return; }
      chunks.push(chunk);
    });
    req.on('end', async () => {
      let event;
      try { event = readEvent(req, Buffer.concat(chunks)); } catch (e) { return problem(res, 400, 'Invalid CloudEvent', String(e.message || e)); }
      const { attributes, data } = event;
      for (const required of ['id', 'source', 'type', 'specversion']) {
        if (!attributes[required]) return problem(res, 400, 'Invalid CloudEvent', `missing ${required}`);
      }
      const deadline = Date.now() + timeoutMs;
      const context = {
        awsRequestId: attributes.id,
        functionName,
        cloudevent: attributes,
        getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
      };
      try {
        const result = await withTimeout(Promise.resolve(handler(data, context)));
        if (result === undefined || dropReply) { res.writeHead(202); return res.end(); }
        res.writeHead(200, {
          'ce-specversion': '1.0',
          'ce-id': encodeHeader(`${attributes.id}.response`),
          'ce-source': encodeHeader(`/functions/${functionName}`),
          'ce-type': encodeHeader(replyType || `${attributes.type}.response`),
          'content-type': 'application/json',
        });
        return res.end(JSON.stringify(result));
      } catch (e) {
        if (e && e.timeout) {
          logFailure(attributes.id, 'timeout', e);
          return problem(res, 504, 'Handler timeout', e.message);
        }
        logFailure(attributes.id, 'error', e);
        // What Lambda's error document needs: the error's type and its stack.
        const errorType = (e && e.name) || 'Error';
        const stackTrace = e && e.stack ? String(e.stack).split('\n').slice(1).map((l) => l.trim()) : [];
        return problem(res, 500, 'Handler error', String((e && e.message) || e), { errorType, stackTrace });
      }
    });
  });
  // KLAMBDA_BIND: the local runner serves on loopback only; a container listens on every interface.
  const host = process.env.KLAMBDA_BIND || '0.0.0.0';
  server.listen(port, host, () => console.log(JSON.stringify({ message: 'serving', port, host, handler: handlerSpec })));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}

main().catch((e) => { console.error(`cannot start: ${e.message || e}`); process.exit(1); });
