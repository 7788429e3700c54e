import knexFactory, { type Knex } from 'knex';

/** Sends a statement on the driver connection as it was written (its original `query`). */
export type Send = (sql: unknown, ...rest: unknown[]) => unknown;

/**
 * A `createKnex` whose driver connections pass every statement through a hook, made anew for each
 * connection (so it may keep state per connection): fault injection against a real server.
 */
export function knexWithStatementHook(perConnection: () => (send: Send, sql: unknown, rest: unknown[]) => unknown): (config: Knex.Config) => Knex {
  return (config) => {
    const knex = knexFactory(config);
    const client = knex.client as { acquireRawConnection(): Promise<{ query: Send }> };
    const acquire = client.acquireRawConnection.bind(client);
    client.acquireRawConnection = async () => {
      const conn = await acquire();
      const send = conn.query.bind(conn);
      const hook = perConnection();
      conn.query = (sql: unknown, ...rest: unknown[]) => hook(send, sql, rest);
      return conn;
    };
    return knex;
  };
}
