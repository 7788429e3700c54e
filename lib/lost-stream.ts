/**
 * Streams and their connections, in both strategies. A streamed query whose connection is lost
 * mid-stream (the server killed it, or went away) must end with an error: mysql2 reports the loss on
 * the connection alone, never on the query's stream (knex's `_stream` listens there only), so the
 * stream never ended, its consumer waited forever and its connection stayed checked out, a slot of
 * the pool lost for good (with the shared strategy, a slot of every tenant on that server). And a
 * stream's connection must be released once (streamsReleaseOnce, below).
 */
import type { Knex } from 'knex';
import { TenantUnavailableError } from './errors';
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
  // Destroyed while it waited for its connection (its consumer gave up: a client that hung up while
  // its request was queued). Its 'close' came before there was a connection to give back, and a
  // query piped into it would never end: the connection would stay checked out for good (with the
  // shared strategy, a slot of every tenant on the server). Not run: knex gives the connection back.
  if ((stream as { destroyed?: unknown } | null)?.destroyed === true) return Promise.resolve();
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
    // socket may not be closed yet when knex gives it back, on the stream's error, below). Not closed
    // here: the server has closed it, and mysql2 then fails the statements queued behind the stream
    // (a query of the same transaction); closing it first would leave them unanswered.
    (conn as { __knex__disposed?: unknown }).__knex__disposed ??= error;
    (stream as { emit(event: 'error', error: unknown): unknown }).emit('error', error);
  };
  connection.once('error', lost);
  connection.once('end', lost);
  const finish = (): void => {
    done = true;
    connection.removeListener!('error', lost);
    connection.removeListener!('end', lost);
  };
  // A stream destroyed by its consumer (`stream.destroy()` when a client hangs up) ends neither with
  // 'end' nor with 'error', and knex's promise never settles, though knex gives the connection back:
  // the listeners go with the stream, not with the next tenant that takes the connection.
  (stream as { once?(event: 'close', listener: () => void): unknown }).once?.('close', finish);
  let running: Promise<unknown>;
  try {
    running = Promise.resolve(baseStream.call(client, conn, obj, stream, options));
  } catch (error) {
    finish();
    throw error;
  }
  return whenSettled(running, finish);
}

/** Marks an object whose `_stream` already fails on a lost connection (see below). */
const STREAMS_FAIL_ON_LOSS = Symbol('objection-tenancy.streamsFailOnLoss');

type Streaming = { _stream?: ClientStream; transaction?: (...args: unknown[]) => unknown; [STREAMS_FAIL_ON_LOSS]?: true };

/**
 * Makes `client`'s streams (and those of clients inheriting from it) fail when their connection is
 * lost, its transactions' streams included: knex builds a transaction's client from the client's
 * class (`client.constructor.prototype`), not from the client, so its transactions are given a class
 * whose `_stream` does it (nested ones, savepoints, inherit that class).
 */
export function failStreamsOnLostConnection(client: Knex.Client): void {
  const target = client as unknown as Streaming;
  const base = target._stream;
  if (typeof base !== 'function' || Object.prototype.hasOwnProperty.call(target, STREAMS_FAIL_ON_LOSS)) return;
  target._stream = function (this: unknown, conn: unknown, obj: unknown, stream: unknown, options: unknown): Promise<unknown> {
    return streamFailingOnLoss(base, this, conn, obj, stream, options);
  };
  target[STREAMS_FAIL_ON_LOSS] = true;
  const transaction = target.transaction;
  if (typeof transaction !== 'function') return;
  target.transaction = function (this: object, ...args: unknown[]): unknown {
    const proto = (this.constructor as { prototype: Streaming } | undefined)?.prototype;
    // Already one of these classes: not wrapped twice.
    if (proto === undefined || proto[STREAMS_FAIL_ON_LOSS] === true) return transaction.apply(this, args);
    const eager = Object.create(this) as object;
    Object.defineProperty(eager, 'constructor', { value: lostStreamClass(proto), configurable: true, writable: true });
    return transaction.apply(eager, args);
  };
}

const CLASSES = new WeakMap<object, { prototype: Streaming }>();

/**
 * The class a transaction's client is built from: `proto` (the driver's class, or qualifyTables'
 * transaction class over it), with a `_stream` that fails on a lost connection; one per `proto`.
 */
function lostStreamClass(proto: Streaming): { prototype: Streaming } {
  let made = CLASSES.get(proto);
  if (made !== undefined) return made;
  const base = proto._stream!;
  const txProto = Object.create(proto) as Streaming;
  made = { prototype: txProto };
  Object.defineProperty(txProto, 'constructor', { value: made, configurable: true, writable: true });
  txProto._stream = function (this: unknown, conn: unknown, obj: unknown, stream: unknown, options: unknown): Promise<unknown> {
    return streamFailingOnLoss(base, this, conn, obj, stream, options);
  };
  txProto[STREAMS_FAIL_ON_LOSS] = true;
  CLASSES.set(proto, made);
  return made;
}

type Runner = { client: Knex.Client; stream(...args: unknown[]): unknown };
const STREAMS_RELEASE_ONCE = Symbol.for('objection-tenancy.streamsReleaseOnce');

/**
 * knex releases a stream's connection twice, on the stream's 'close' and in the `finally` of its
 * acquire. The first may already have handed the connection to another acquire, which the second
 * then gives back while it runs, to be handed to a third: in knex's own pool (tarn) too, where a
 * query queued on the connection of a transaction in flight was rolled back with it. knex's Runner (not
 * exported: its class is read off a runner, whose constructor only stores) is patched once, for
 * every knex of that copy: a stream's runner releases its connection once. Patching the prototype
 * leaves a query's path as it was (a runner of our own per query cost 1.5-5 µs, bench:cpu).
 */
export function streamsReleaseOnce(client: Knex.Client): void {
  const proto = Object.getPrototypeOf((client as unknown as { runner(builder: unknown): Runner }).runner(undefined)) as Runner & { [STREAMS_RELEASE_ONCE]?: true };
  if (proto[STREAMS_RELEASE_ONCE]) return;
  const stream = proto.stream;
  proto.stream = function (this: Runner, ...args: unknown[]): unknown {
    const owner = this.client;
    let released = false;
    const once = Object.create(owner) as Knex.Client;
    once.releaseConnection = (conn: unknown) => {
      if (released) return Promise.resolve();
      released = true;
      return owner.releaseConnection(conn as never);
    };
    this.client = once;
    // knex's own test of the handler form: `stream(handler)` or `stream(options, handler)`.
    const at = args.length === 1 && typeof args[0] === 'function' ? 0 : typeof args[1] === 'function' ? 1 : -1;
    if (at === -1) return quietAfterClose(stream.apply(this, args));
    const handler = args[at] as (made: unknown) => unknown;
    args[at] = (made: unknown) => handler(quietAfterClose(made));
    return stream.apply(this, args);
  };
  proto[STREAMS_RELEASE_ONCE] = true;
}

/**
 * knex emits a failed acquire on the stream (`emit('error')`), destroyed or not: on one its consumer
 * destroyed while it waited (and stopped listening to), that threw out of knex's promise chain, an
 * unhandled rejection that ends the process. Once the stream is closed, an error nobody listens to
 * any more is dropped.
 */
function quietAfterClose<S>(made: S): S {
  const stream = made as { once?(event: 'close', listener: () => void): unknown; listenerCount?(event: 'error'): number; on?(event: 'error', listener: () => void): unknown } | null;
  if (stream === null || typeof stream?.once !== 'function' || typeof stream.listenerCount !== 'function' || typeof stream.on !== 'function') return made;
  stream.once('close', () => {
    if (stream.listenerCount!('error') === 0) stream.on!('error', () => undefined);
  });
  return made;
}
