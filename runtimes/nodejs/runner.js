'use strict';
// The runner inside a sandbox for the `nodejs` runtime (Node 18+ builtins only).
//
// It serves runner.sock (see docs/internals.md): frames `u32 total | u32 header | JSON header |
// payload` carrying ops `ping`, `load` and `invoke`, several in flight at once. Everything an
// invocation writes with console.* or process.stdout/stderr.write is captured into that
// invocation's `log`; AsyncLocalStorage keeps concurrent invocations apart.

const fs = require('fs');
const net = require('net');
const path = require('path');
const { AsyncLocalStorage } = require('async_hooks');
const { pathToFileURL } = require('url');

const MAX_FRAME = 64 * 1024 * 1024; // same cap as engine/easyfaas/wire.py
const LOG_CAP = 64 * 1024; // a call's log keeps its last 64 KiB
// Calls whose use of the CPU is measured: one in this many, the first included (as runner.py).
const USAGE_EVERY = 8;

class RunnerError extends Error {
  constructor(errorType, message, stackTrace) {
    super(message);
    this.errorType = errorType;
    this.stackTrace = stackTrace;
  }

  toWire() {
    const out = { errorType: this.errorType, errorMessage: this.message };
    if (this.stackTrace !== undefined) out.stackTrace = this.stackTrace;
    return out;
  }
}

// The error of whatever a handler threw or passed to its callback.
function userError(err) {
  if (err instanceof Error) {
    const lines = typeof err.stack === 'string' ? err.stack.split('\n').slice(1) : [];
    // The runner's own frames say nothing about the user's bug.
    const stack = lines.map((line) => line.trim())
      .filter((line) => !line.includes(__filename) && !line.includes('(node:internal'));
    const type = err.name || (err.constructor && err.constructor.name) || 'Error';
    return new RunnerError(type, err.message, stack);
  }
  return new RunnerError('Error', String(err));
}

// ---- log capture ------------------------------------------------------------------------------

class LogBuffer {
  constructor() {
    this.parts = [];
    this.size = 0;
    this.truncated = false;
  }

  write(text) {
    this.parts.push(text);
    this.size += text.length;
    while (this.size > LOG_CAP && this.parts.length > 1) {
      this.size -= this.parts.shift().length;
      this.truncated = true;
    }
  }

  text() {
    const text = this.parts.join('');
    if (this.truncated || text.length > LOG_CAP) {
      return '[log truncated: only the last 64 KiB are kept]\n' + text.slice(-LOG_CAP);
    }
    return text;
  }
}

const currentLog = new AsyncLocalStorage();

// console.* writes through process.stdout/stderr.write, so patching those captures both.
function captureStream(stream) {
  const original = stream.write.bind(stream);
  stream.write = (chunk, encoding, callback) => {
    const log = currentLog.getStore();
    if (log === undefined) return original(chunk, encoding, callback);
    log.write(typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
    const done = typeof encoding === 'function' ? encoding : callback;
    if (typeof done === 'function') process.nextTick(done);
    return true;
  };
}

// ---- the function -----------------------------------------------------------------------------

function checkFunction(spec) {
  const bad = (key) => new RunnerError('Runtime.BadRequest', `function.${key} is missing or has the wrong type`);
  if (spec === null || typeof spec !== 'object') {
    throw new RunnerError('Runtime.BadRequest', "load needs a 'function' object");
  }
  for (const key of ['name', 'handler']) if (typeof spec[key] !== 'string') throw bad(key);
  for (const key of ['memory', 'timeout']) if (typeof spec[key] !== 'number') throw bad(key);
  if (!['number', 'string'].includes(typeof spec.version)) throw bad('version');
  const env = spec.env || {};
  const envOk = typeof env === 'object' && !Array.isArray(env) &&
    Object.entries(env).every(([k, v]) => k && !k.includes('=') && typeof v === 'string');
  if (!envOk) throw new RunnerError('Runtime.BadRequest', 'function.env must map names to strings');
  return {
    name: spec.name,
    version: String(spec.version),
    handler: spec.handler,
    memory: spec.memory,
    timeout: spec.timeout,
    env: {
      ...env,
      EASYFAAS_FUNCTION_NAME: spec.name,
      EASYFAAS_FUNCTION_VERSION: String(spec.version),
      EASYFAAS_FUNCTION_MEMORY_SIZE: String(spec.memory),
    },
  };
}

function firstLine(err) {
  return String((err && err.message) || err).split('\n')[0];
}

async function importModule(taskDir, moduleName) {
  const base = path.join(taskDir, moduleName);
  try {
    if (fs.existsSync(base + '.mjs')) return await import(pathToFileURL(base + '.mjs').href);
    try {
      return require(base);
    } catch (err) {
      // A `.js` file in a `"type": "module"` package is ESM: require refuses it, import() loads it.
      if (err && err.code === 'ERR_REQUIRE_ESM') return await import(pathToFileURL(require.resolve(base)).href);
      throw err;
    }
  } catch (err) {
    if (err instanceof SyntaxError) {
      throw new RunnerError('Runtime.UserCodeSyntaxError', `Syntax error in module '${moduleName}': ${firstLine(err)}`);
    }
    const e = userError(err);
    const why = err && err.code === 'MODULE_NOT_FOUND' ? firstLine(err) : `${e.errorType}: ${firstLine(err)}`;
    throw new RunnerError('Runtime.ImportModuleError', `Unable to import module '${moduleName}': ${why}`, e.stackTrace);
  }
}

async function loadHandler(taskDir, handlerName) {
  const dot = handlerName.lastIndexOf('.');
  const moduleName = handlerName.slice(0, dot);
  const funcName = handlerName.slice(dot + 1);
  if (dot <= 0 || !funcName) {
    throw new RunnerError('Runtime.MalformedHandlerName', `Bad handler '${handlerName}': expected 'module.function'`);
  }
  const mod = await importModule(taskDir, moduleName);
  // An ES module's CommonJS-style `module.exports = {handler}` shows up as its default export.
  const handler = mod[funcName] !== undefined ? mod[funcName] : mod.default && mod.default[funcName];
  if (typeof handler !== 'function') {
    throw new RunnerError('Runtime.HandlerNotFound', `Handler '${funcName}' missing on module '${moduleName}'`);
  }
  return handler;
}

function makeContext(requestId, deadlineMs, fn) {
  return {
    requestId,
    awsRequestId: requestId,
    functionName: fn.name,
    functionVersion: fn.version,
    memoryLimitInMB: fn.memory,
    getRemainingTimeInMillis: () => Math.max(0, Math.floor(deadlineMs - Date.now())),
  };
}

// Handlers with three parameters answer through callback(err, result); others return a value
// or a promise.
function callHandler(handler, event, context) {
  return new Promise((resolve, reject) => {
    const callback = (err, result) => (err ? reject(err) : resolve(result));
    const returned = handler(event, context, callback);
    if (handler.length < 3 || (returned && typeof returned.then === 'function')) {
      Promise.resolve(returned).then(resolve, reject);
    }
  });
}

function parseEvent(payload) {
  if (payload.toString('utf8').trim() === '') return {};
  try {
    return JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw new RunnerError('Runtime.InvalidEvent', `the event is not valid JSON: ${err.message}`);
  }
}

function dumpResult(result) {
  try {
    return Buffer.from(JSON.stringify(result === undefined ? null : result), 'utf8');
  } catch (err) {
    throw new RunnerError('Runtime.ResultSerializationError', `the handler's result is not JSON: ${err.message}`);
  }
}

// ---- CPU use ----------------------------------------------------------------------------------

let schedstatFd = null;
const schedstatBuf = Buffer.alloc(128); // one thread runs JavaScript: one buffer serves every read

// How long this process has run, plus how long its JavaScript thread waited for a CPU, in µs;
// null where the kernel does not say. The controller compares a call's share of this with its
// run time to tell calls that compute from calls that wait (scheduler.instances_per_cpu); as in
// runner.py, the wait counts, since on a busy CPU a computing call spends much of its time
// waiting to run. Process-wide CPU time: with several calls in flight it is the sandbox's.
function cpuDemandUs() {
  if (schedstatFd === null) {
    try {
      schedstatFd = fs.openSync('/proc/thread-self/schedstat', 'r');
    } catch {
      schedstatFd = -1;
    }
  }
  if (schedstatFd < 0) return null;
  let waitedNs;
  try {
    const n = fs.readSync(schedstatFd, schedstatBuf, 0, schedstatBuf.length, 0);
    waitedNs = Number(schedstatBuf.toString('latin1', 0, n).split(' ')[1]);
  } catch {
    schedstatFd = null; // a handler closed it: open it again next time
    return null;
  }
  if (!Number.isFinite(waitedNs)) return null;
  const used = process.cpuUsage();
  return used.user + used.system + waitedNs / 1000;
}

// ---- protocol ---------------------------------------------------------------------------------

class Runner {
  constructor(taskDir) {
    this.taskDir = taskDir;
    this.fn = null;
    this.handler = null;
    this.loadTried = false;
    this.calls = 0;
  }

  async handle(header, payload) {
    if (header.op === 'ping') return [{ ok: true }, Buffer.alloc(0)];
    if (header.op !== 'load' && header.op !== 'invoke') {
      throw new RunnerError('Runtime.BadRequest', `unknown op ${JSON.stringify(header.op)}`);
    }
    const log = new LogBuffer();
    const measured = header.op === 'invoke' && this.calls++ % USAGE_EVERY === 0;
    // Demand first: the first reading opens /proc, which is no part of the call.
    const demand = measured ? cpuDemandUs() : null;
    const started = performance.now();
    try {
      const body = await currentLog.run(log, () =>
        header.op === 'load' ? this.load(header) : this.invoke(header, payload));
      const usage = {};
      const demandEnd = demand === null ? null : cpuDemandUs();
      if (demandEnd !== null) {
        usage.run_s = (performance.now() - started) / 1000;
        usage.cpu_demand_s = (demandEnd - demand) / 1e6;
      }
      return [{ ok: true, log: log.text(), ...usage }, body];
    } catch (err) {
      const error = err instanceof RunnerError ? err : userError(err);
      return [{ ok: false, error: error.toWire(), log: log.text() }, Buffer.alloc(0)];
    }
  }

  async load(header) {
    const fn = checkFunction(header.function);
    // A sandbox never switches code: a half-done import would leak into the next one.
    if (this.loadTried) throw new RunnerError('Runtime.AlreadyLoaded', 'this sandbox has already loaded code');
    this.loadTried = true;
    Object.assign(process.env, fn.env);
    process.chdir(this.taskDir);
    this.handler = await loadHandler(this.taskDir, fn.handler);
    this.fn = fn;
    return Buffer.alloc(0);
  }

  async invoke(header, payload) {
    const fn = this.fn;
    if (fn === null) throw new RunnerError('Runtime.NotLoaded', "no function is loaded; send 'load' first");
    if (typeof header.request_id !== 'string' || !header.request_id) {
      throw new RunnerError('Runtime.BadRequest', "invoke needs a 'request_id' string");
    }
    const deadline = typeof header.deadline_ms === 'number' ? header.deadline_ms : Date.now() + fn.timeout * 1000;
    const event = parseEvent(payload);
    let result;
    try {
      result = await callHandler(this.handler, event, makeContext(header.request_id, deadline, fn));
    } catch (err) {
      throw userError(err);
    }
    return dumpResult(result);
  }
}

function encode(header, payload) {
  const head = Buffer.from(JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeUInt32BE(head.length + payload.length + 4, 0);
  prefix.writeUInt32BE(head.length, 4);
  return Buffer.concat([prefix, head, payload]);
}

async function answer(socket, runner, header, payload) {
  let resp;
  let body = Buffer.alloc(0);
  try {
    [resp, body] = await runner.handle(header, payload);
  } catch (err) {
    const error = err instanceof RunnerError ? err : new RunnerError('Runtime.InternalError', String(err));
    resp = { ok: false, error: error.toWire() };
  }
  if (!socket.destroyed) socket.write(encode({ ...resp, id: header.id }, body));
}

// Chunks are joined only once a whole prefix or frame has arrived, so big payloads are copied
// once, not once per chunk.
function serveConnection(socket, runner) {
  let chunks = [];
  let size = 0;
  let need = 8; // bytes of the next prefix, or of the whole frame once its prefix is known
  let headLen = -1;
  socket.on('error', () => socket.destroy()); // the peer vanished: drop this connection only
  socket.on('data', (chunk) => {
    chunks.push(chunk);
    size += chunk.length;
    while (size >= need) {
      const buf = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks, size);
      if (headLen < 0) {
        const total = buf.readUInt32BE(0);
        headLen = buf.readUInt32BE(4);
        if (total > MAX_FRAME || total < 4 || headLen > total - 4) return socket.destroy();
        chunks = [buf];
        need = total + 4;
        continue;
      }
      const frame = buf.subarray(0, need);
      const rest = buf.subarray(need);
      chunks = rest.length ? [rest] : [];
      size = rest.length;
      const header = parseHeader(frame.subarray(8, 8 + headLen));
      if (header === null) return socket.destroy();
      answer(socket, runner, header, Buffer.from(frame.subarray(8 + headLen)));
      need = 8;
      headLen = -1;
    }
  });
}

function parseHeader(bytes) {
  try {
    const header = JSON.parse(bytes.toString('utf8'));
    return header !== null && typeof header === 'object' && !Array.isArray(header) ? header : null;
  } catch (err) {
    return null;
  }
}

function parseArgs(argv) {
  const args = { readyFd: -1 };
  const names = { '--socket': 'socket', '--ready-fd': 'readyFd', '--task-dir': 'taskDir' };
  for (let i = 0; i < argv.length; i += 2) {
    const key = names[argv[i]];
    if (key === undefined || argv[i + 1] === undefined) throw new Error(`bad argument ${argv[i]}`);
    args[key] = key === 'readyFd' ? Number.parseInt(argv[i + 1], 10) : argv[i + 1];
  }
  if (!args.socket || !args.taskDir || Number.isNaN(args.readyFd)) {
    throw new Error('usage: node runner.js --socket P [--ready-fd N] --task-dir D');
  }
  return args;
}

function main() {
  let args;
  try {
    args = parseArgs(process.argv.slice(2));
    fs.rmSync(args.socket, { force: true });
  } catch (err) {
    process.stderr.write(`runner: cannot serve: ${err.message}\n`);
    process.exit(1);
  }
  captureStream(process.stdout);
  captureStream(process.stderr);
  const runner = new Runner(args.taskDir);
  const server = net.createServer((socket) => serveConnection(socket, runner));
  server.on('error', (err) => {
    process.stderr.write(`runner: cannot serve: ${err.message}\n`);
    process.exit(1);
  });
  server.listen(args.socket, () => {
    fs.chmodSync(args.socket, 0o660);
    if (args.readyFd >= 0) {
      fs.writeSync(args.readyFd, 'R');
      fs.closeSync(args.readyFd);
    }
  });
}

main();
