/**
 * Statements sent later than knex reports them. knex emits its `query` event as it hands a statement
 * to the driver; the shared strategy under qualifyTables may hold a statement back and send it after
 * a `USE` (a statement refused on a clean connection, or one that must be switched first), behind
 * statements knex reported after it. A transaction that follows the order of its statements on its
 * connection (transaction.ts: a savepoint's rollback undoes what went out after its SAVEPOINT) is
 * told of that later send here.
 */
const followers = new WeakMap<object, (input: unknown) => void>();

/** Calls `follower` with each statement sent later on `conn`, until the returned function is called. */
export function followLaterSends(conn: object, follower: (input: unknown) => void): () => void {
  followers.set(conn, follower);
  return () => {
    if (followers.get(conn) === follower) followers.delete(conn);
  };
}

/** A statement (knex's query object, or its text) goes out now on `conn`, later than knex reported it. */
export function sentLater(conn: unknown, input: unknown): void {
  if (conn !== null && typeof conn === 'object') followers.get(conn)?.(input);
}
