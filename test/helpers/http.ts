/** Starting test apps on an ephemeral port and a small closed-loop load generator. */
import type { AddressInfo } from 'node:net';
import { request as httpRequest, type Server } from 'node:http';
import type { Express } from 'express';

export interface Running {
  url: string;
  close(): Promise<void>;
}

export function listen(app: Express | ((req: never, res: never) => void)): Promise<Running> {
  return new Promise((resolve) => {
    const server: Server = (app as Express).listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      resolve({
        url: `http://127.0.0.1:${port}`,
        close: () =>
          new Promise<void>((done) => {
            server.closeAllConnections?.();
            server.close(() => done());
          }),
      });
    });
  });
}

/** Runs `total` calls of `task(i)` with `concurrency` in flight. */
export async function load(total: number, concurrency: number, task: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < total) await task(next++);
  };
  await Promise.all(Array.from({ length: concurrency }, worker));
}

/** Resolves after 0 to `max` ms, or on the next turn: makes concurrent requests interleave at random. */
export function randomPause(max = 3): Promise<void> {
  const roll = Math.random();
  if (roll < 0.3) return Promise.resolve();
  if (roll < 0.6) return new Promise((r) => setImmediate(r));
  return new Promise((r) => setTimeout(r, Math.floor(Math.random() * (max + 1))));
}

/** A JSON error handler for test apps: `{ error: { code, message } }` with the error's statusCode. */
export function jsonErrors(err: { statusCode?: number; code?: string; message?: string }, _req: unknown, res: { status(n: number): { json(body: unknown): void } }, _next: unknown): void {
  res.status(err.statusCode ?? 500).json({ error: { code: err.code ?? 'INTERNAL', message: err.message } });
}

/** A request through node:http, which (unlike fetch) may set the Host header. */
export function request(
  url: string,
  options: { method?: string; headers?: Record<string, string>; body?: string } = {},
): Promise<{ status: number; json: () => unknown; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(url, { method: options.method ?? 'GET', headers: options.headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode!, text, json: () => JSON.parse(text) }));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}
