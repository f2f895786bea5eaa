/**
 * A fault-injecting HTTP proxy on 127.0.0.1 for S3 tests. Clients point their
 * endpoint at it; it forwards each request to the real server with the Host
 * header unchanged (so SigV4 signatures still verify), and answers a chosen
 * share of requests with a fault instead:
 *   slowdown  503 SlowDown (S3's throttling answer)
 *   error500  500 InternalError
 *   drop      the connection is destroyed before any answer (the request is not forwarded)
 *   stall     no answer at all until `stallMs` (past the client's request timeout), then destroyed
 *   truncate  forwarded; the server's answer goes back with its full Content-Length
 *             but only half the body, then the connection is destroyed
 *             (for a bodiless answer: destroyed after forwarding, so the request
 *             took effect but the client never learns it)
 * It counts requests by method and faults by kind. Faults are decided per
 * request with a seeded generator, so a run is repeatable.
 */
import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type FaultKind = 'slowdown' | 'error500' | 'drop' | 'stall' | 'truncate';
export const FAULT_KINDS: readonly FaultKind[] = ['slowdown', 'error500', 'drop', 'stall', 'truncate'];

export interface FaultRule {
  /** Share of matching requests that get a fault (0–1). */
  rate: number;
  /** Faults to pick from (uniformly). Default all. */
  kinds?: readonly FaultKind[];
  /** Which requests the rule applies to (default every request). */
  match?: (req: { method: string; path: string }) => boolean;
}

export interface FaultProxyOptions {
  /** `http://127.0.0.1:PORT` of the real server. */
  target: string;
  rules?: FaultRule[];
  /** How long a stalled answer is held before the connection is destroyed (default 4000 ms). */
  stallMs?: number;
  seed?: number;
}

export interface SeenProxyRequest {
  method: string;
  path: string;
  fault: FaultKind | undefined;
}

export interface FaultProxy {
  readonly endpoint: string;
  readonly requests: readonly SeenProxyRequest[];
  /** Requests with this method (faulted ones included). */
  count(method: string, filter?: (path: string) => boolean): number;
  faults(kind?: FaultKind): number;
  setRules(rules: FaultRule[]): void;
  stop(): Promise<void>;
}

/** mulberry32: a small seeded generator. */
function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function s3Error(res: ServerResponse, status: number, code: string, message: string): void {
  const body = `<?xml version="1.0" encoding="UTF-8"?><Error><Code>${code}</Code><Message>${message}</Message><RequestId>fault</RequestId></Error>`;
  res.writeHead(status, {
    'content-type': 'application/xml',
    'content-length': Buffer.byteLength(body),
    connection: 'close',
  });
  res.end(body);
}

export async function startFaultProxy(opts: FaultProxyOptions): Promise<FaultProxy> {
  const target = new URL(opts.target);
  const rand = random(opts.seed ?? 1);
  let rules = opts.rules ?? [];
  const stallMs = opts.stallMs ?? 4000;
  const requests: SeenProxyRequest[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();

  const pick = (method: string, path: string): FaultKind | undefined => {
    for (const rule of rules) {
      if (rule.match && !rule.match({ method, path })) continue;
      if (rand() >= rule.rate) continue;
      const kinds = rule.kinds ?? FAULT_KINDS;
      return kinds[Math.floor(rand() * kinds.length)] ?? kinds[0];
    }
    return undefined;
  };

  const forward = (req: IncomingMessage, res: ServerResponse, truncate: boolean) => {
    const up = httpRequest(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: req.headers,
      },
      (upRes) => {
        const length = Number(upRes.headers['content-length'] ?? Number.NaN);
        if (truncate && (!Number.isFinite(length) || length < 2 || req.method === 'HEAD')) {
          // Nothing to cut short: the request took effect, the client never hears.
          upRes.resume();
          req.socket.destroy();
          return;
        }
        res.writeHead(upRes.statusCode ?? 502, upRes.headers);
        if (!truncate) {
          upRes.pipe(res);
          return;
        }
        let left = Math.floor(length / 2);
        upRes.on('data', (chunk: Buffer) => {
          if (left <= 0) return;
          const part = chunk.subarray(0, left);
          left -= part.length;
          res.write(part);
          if (left <= 0) {
            upRes.destroy();
            // Let the half body reach the client, then cut the connection.
            setImmediate(() => req.socket.destroy());
          }
        });
      },
    );
    up.on('error', () => req.socket.destroy());
    req.pipe(up);
  };

  const server = createServer((req, res) => {
    const method = req.method ?? 'GET';
    const path = req.url ?? '/';
    const fault = pick(method, path);
    requests.push({ method, path, fault });
    switch (fault) {
      case 'slowdown':
        req.resume();
        s3Error(res, 503, 'SlowDown', 'Please reduce your request rate.');
        return;
      case 'error500':
        req.resume();
        s3Error(res, 500, 'InternalError', 'We encountered an internal error. Please try again.');
        return;
      case 'drop':
        req.socket.destroy();
        return;
      case 'stall': {
        req.resume();
        const t = setTimeout(() => {
          timers.delete(t);
          req.socket.destroy();
        }, stallMs);
        timers.add(t);
        return;
      }
      case 'truncate':
        forward(req, res, true);
        return;
      default:
        forward(req, res, false);
    }
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  server.keepAliveTimeout = 5000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    requests,
    count: (method, filter) =>
      requests.filter((r) => r.method === method && (!filter || filter(r.path))).length,
    faults: (kind) => requests.filter((r) => r.fault !== undefined && (!kind || r.fault === kind)).length,
    setRules(next) {
      rules = next;
    },
    async stop() {
      for (const t of timers) clearTimeout(t);
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
