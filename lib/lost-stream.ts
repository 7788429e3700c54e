/**
 * A streamed query whose connection is lost mid-stream (the server killed it, or went away) must
 * end with an error. mysql2 reports the loss on the connection alone, never on the query's stream
 * (knex's `_stream` listens there only), so the stream never ended: its consumer waited forever and
 * its connection stayed checked out, a slot of the pool lost for good (with the shared strategy, a
 * slot of every tenant on that server).
 */
import type { Knex } from 'knex';
import { TenantUnavailableError } from './errors';
import { closeSocketNow } from './pooled-connection';
import { currentScope, whenSettled } from './scope';

/** knex's `client._stream(connection, queryObject, stream, options)`. */
export type ClientStream = (this: unknown, conn: unknown, obj: unknown, stream: unknown, options: unknown) => Promise<unknown>;

type Connection = {
  once(event: string, listener: (cause?: unknown) => void): unknown;
  removeListener(event: string, listener: (cause?: unknown) => void): unknown;
};

/**
 * Runs `baseStream` and fails `stream` with a `TenantUnavailableError` (503) if `conn` emits `error`
 * or `end` before the stream is done; knex then releases the connection, which the pool closes.
 */
export function streamFailingOnLoss(baseStream: ClientStream, client: unknown, conn: unknown, obj: unknown, stream: unknown, options: unknown): Promise<unknown> {
  const connection = conn as Partial<Connection> | null;
  if (connection === null || typeof connection !== 'object' || typeof connection.once !== 'function' || typeof connection.removeListener !== 'function') {
    return baseStream.call(client, conn, obj, stream, options);
  }
  let done = false;
  // Read now: the connection's events run outside any scope (connections are opened outside them).
  const tenantId = currentScope()?.tenantId ?? '';
  const lost = (cause?: unknown): void => {
    if (done) return;
    done = true;
    const error = new TenantUnavailableError(tenantId, { cause, reason: 'its connection was lost in the middle of a streamed query' });
    // Never handed out again: knex's pool and the shared one both refuse a connection so marked (its
    // socket may not be closed yet when knex gives it back, on the stream's error, below).
    (conn as { __knex__disposed?: unknown }).__knex__disposed ??= error;
    closeSocketNow(conn);
    (stream as { emit(event: 'error', error: unknown): unknown }).emit('error', error);
  };
  connection.once('error', lost);
  connection.once('end', lost);
  const finish = (): void => {
    done = true;
    connection.removeListener!('error', lost);
    connection.removeListener!('end', lost);
  };
  let running: Promise<unknown>;
  try {
    running = Promise.resolve(baseStream.call(client, conn, obj, stream, options));
  } catch (error) {
    finish();
    throw error;
  }
  return whenSettled(running, finish);
}

const WRAPPED = Symbol('objection-tenancy.streamFailsOnLoss');

/** Makes `client`'s streams (and those of clients inheriting from it) fail when their connection is lost. */
export function failStreamsOnLostConnection(client: Knex.Client): void {
  const target = client as unknown as { _stream?: ClientStream; [WRAPPED]?: true };
  const base = target._stream;
  if (typeof base !== 'function' || Object.prototype.hasOwnProperty.call(target, WRAPPED)) return;
  target._stream = function (this: unknown, conn: unknown, obj: unknown, stream: unknown, options: unknown): Promise<unknown> {
    return streamFailingOnLoss(base, this, conn, obj, stream, options);
  };
  target[WRAPPED] = true;
}
