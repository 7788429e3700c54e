import type { Knex } from 'knex';
import { TenantMismatchError } from './errors';

/**
 * `qualifyTables` (shared strategy): a tenant handle carries its database under this key, and
 * TenantModel queries and `knex('table')` builders run through such a handle name it (the knex
 * builder's `withSchema`; model.ts, shared-connections.ts), so that a connection with no current
 * database can serve them without a `USE` (see affinity-pool.ts and inline-switch.ts for why that
 * fails closed).
 */
const TENANT_DATABASE = Symbol.for('objection-tenancy.tenantDatabase');

/** The tenant whose database a qualified client's builders name (see settleOwnNamesOnCompile). */
const QUALIFIED_CLIENT = Symbol('objection-tenancy.qualifiedClient');
/** A qualified client: its tenant's database, on which server (two servers may each have a database of one name; see AffinityPool.identity). */
type QualifiedClient = { readonly database: string; readonly tenantId: string; readonly server: unknown };

/** Whether a builder of `owner` names, in `into`'s statements, a database other than `into`'s own. */
function foreignTo(owner: QualifiedClient, into: QualifiedClient | undefined): boolean {
  return into === undefined || into.database !== owner.database || into.server !== owner.server;
}

function foreignBuilder(builderTenant: string, tenantId: string | undefined): TenantMismatchError {
  const error = new TenantMismatchError(builderTenant, tenantId ?? 'another connection');
  error.message =
    `A knex query builder made on the connection of tenant "${builderTenant}" (tenancy.knex(), toKnexQuery()) was used inside a query ${tenantId === undefined ? 'on another connection' : `of tenant "${tenantId}"`} ` +
    '(a subquery, a binding, or moved with transacting()): it names its own tenant\'s database. Build it where the query runs.';
  return error;
}

const TRANSACTING_CHECKED = Symbol.for('objection-tenancy.transactingChecked');
type BuilderPrototype = { transacting(this: { client?: Record<symbol, unknown> }, trx: unknown): unknown; [TRANSACTING_CHECKED]?: true };

/**
 * knex's `builder.transacting(trx)` gives a builder the transaction's client: a builder made on
 * another tenant's qualified client, moved into this tenant's transaction, would pass the compile
 * check above as this tenant's while it names the other's database (a read or write of it). The move
 * itself is refused: once per copy of knex, on its QueryBuilder prototype.
 */
/** checksTransacting on the QueryBuilder prototype of `client`'s knex, found once per client prototype (handles share one). */
function checksTransactingOf(client: object): void {
  const shared = Object.getPrototypeOf(client) as object;
  if (checkedClients.has(shared)) return;
  checksTransacting(Object.getPrototypeOf((client as { queryBuilder(): object }).queryBuilder()) as object);
  checkedClients.add(shared);
}
const checkedClients = new WeakSet<object>();

function checksTransacting(proto: object): void {
  const target = proto as BuilderPrototype;
  if (target[TRANSACTING_CHECKED] === true || typeof target.transacting !== 'function') return;
  const transacting = target.transacting;
  target.transacting = function (this: { client?: Record<symbol, unknown> }, trx: unknown): unknown {
    const owner = this.client?.[QUALIFIED_CLIENT] as QualifiedClient | undefined;
    if (owner !== undefined) {
      const into = (trx as { client?: Record<symbol, unknown> } | null | undefined)?.client?.[QUALIFIED_CLIENT] as QualifiedClient | undefined;
      if (foreignTo(owner, into)) throw foreignBuilder(owner.tenantId, into?.tenantId ?? 'another connection');
    }
    return transacting.call(this, trx);
  };
  target[TRANSACTING_CHECKED] = true;
}

const GUARDED_COMPILERS = new WeakSet<object>();

/**
 * A builder made on a tenant's qualified client names that tenant's database in its SQL: compiled
 * as a subquery or a binding by any client other than a qualified one of the same database (a pool
 * per tenant's knex, a handle that switches with `USE`, another tenancy's, a central knex), it would
 * read or write that tenant's database from another tenant's statement. Refused there too, on the
 * dialect's compiler, once per client class: a qualified client checks its own builders itself
 * (settleOwnNamesOnCompile), and a builder of no qualified client passes as before.
 */
export function refuseForeignQualifiedBuilders(client: object): void {
  let proto = Object.getPrototypeOf(client) as object | null;
  while (proto !== null && !Object.prototype.hasOwnProperty.call(proto, 'queryCompiler')) proto = Object.getPrototypeOf(proto) as object | null;
  if (proto === null || GUARDED_COMPILERS.has(proto)) return;
  GUARDED_COMPILERS.add(proto);
  const target = proto as { queryCompiler: (this: { [QUALIFIED_CLIENT]?: QualifiedClient }, builder: unknown, formatter?: unknown) => unknown };
  const baseCompiler = target.queryCompiler;
  target.queryCompiler = function (this: { [QUALIFIED_CLIENT]?: QualifiedClient }, builder: unknown, formatter?: unknown): unknown {
    const owner = (builder as { client?: { [QUALIFIED_CLIENT]?: QualifiedClient } } | null)?.client?.[QUALIFIED_CLIENT];
    if (owner !== undefined && foreignTo(owner, this[QUALIFIED_CLIENT])) {
      throw foreignBuilder(owner.tenantId, this[QUALIFIED_CLIENT]?.tenantId);
    }
    return baseCompiler.call(this, builder, formatter);
  };
}

/** Marks a tenant handle: its model queries name `database`. */
export function markQualified(handle: Knex, database: string): void {
  (handle as unknown as Record<symbol, string>)[TENANT_DATABASE] = database;
}

/** A table name written `db.table`: it keeps its own database, it is never qualified. */
export function namesItsDatabase(name: unknown): boolean {
  return typeof name === 'string' && name.includes('.');
}

/** The database a model query through `knex` should name, if its handle is marked. */
export function qualifiedDatabase(knex: unknown): string | undefined {
  if (knex === null || knex === undefined) return undefined;
  return (knex as Record<symbol, string | undefined>)[TENANT_DATABASE];
}

type KnexStatement = { grouping?: unknown; alias?: unknown; table?: unknown; schema?: unknown; value?: unknown; recursive?: unknown };

/**
 * Takes the tenant's database back off the names that carry their own: a `from()` or join written
 * `db.table`, or naming a common table expression of the query (`with('x', ...)`: `from('x')` is the
 * CTE, not a table), its own (`ctes`) or one of the statements it is compiled inside (OUTER_CTES: in
 * SQL their names reach it, as on a connection with a current database). Those of the outer
 * statements are settled for this compile only: returned, for withCteScope to give their database
 * back after (the same builder used elsewhere names its table again).
 */
function unqualifyOwnNames(built: unknown, database: string, ctes: KnexStatement[] | undefined, body: ReturnType<typeof bodyOf>): KnexStatement[] | undefined {
  const single = (built as { _single?: KnexStatement })._single;
  const statements = (built as { _statements?: KnexStatement[] })._statements;
  if (single === undefined || !Array.isArray(statements)) return undefined;
  const own = ctes === undefined ? undefined : new Set(ctes.map((statement) => statement.alias as string));
  let outer: Set<string> | undefined;
  for (const frame of OUTER_CTES) {
    // A CTE body (`body`) sees of its own statement's CTEs only what SQL lets it.
    const visible = frame === body?.frame ? body.visible : frame.visible;
    for (let i = 0; i < visible; i++) (outer ??= new Set()).add(frame.ctes[i]!.alias as string);
  }
  let settled: KnexStatement[] | undefined;
  if (single.schema === database) settled = settleFor(single, own, outer, settled);
  for (const statement of statements) {
    if (statement.grouping === 'join' && statement.schema === database) settled = settleFor(statement, own, outer, settled);
  }
  return settled;
}

/** One name of unqualifyOwnNames: `settled` with `statement` added when settled for the outer CTEs. */
function settleFor(statement: KnexStatement, own: Set<string> | undefined, outer: Set<string> | undefined, settled: KnexStatement[] | undefined): KnexStatement[] | undefined {
  if (settleName(statement, own) || outer === undefined || !ownName(statement.table, outer)) return settled;
  statement.schema = undefined;
  return [...(settled ?? []), statement];
}

/** The CTEs a builder defines (`with('x', ...)`, `withRecursive`), if any. */
function ctesOf(built: unknown): KnexStatement[] | undefined {
  const statements = (built as { _statements?: KnexStatement[] })._statements;
  if (!Array.isArray(statements)) return undefined;
  // A loop, not filter(): every compile of every model query runs it, and nearly none has a CTE.
  let ctes: KnexStatement[] | undefined;
  for (const statement of statements) {
    if (statement.grouping === 'with' && typeof statement.alias === 'string') (ctes ??= []).push(statement);
  }
  return ctes;
}

/**
 * The CTEs of the statements being compiled now, outermost first: knex compiles a statement's
 * subqueries and CTE bodies synchronously inside its own `toSQL()` (see withCteScope). `visible`:
 * how many of them, in order, what is compiled now sees: all of them in the statement's subqueries;
 * in the body of its CTE number i (and anything inside that body) the ones before it, and itself when
 * recursive (`with pets as (select ... from pets)` reads the table `pets`).
 */
const OUTER_CTES: { readonly ctes: KnexStatement[]; visible: number }[] = [];

/** Where `built` is the body of a CTE being compiled: that CTE's frame, and what its body sees. */
function bodyOf(built: unknown): { frame: (typeof OUTER_CTES)[number]; visible: number } | undefined {
  for (let f = OUTER_CTES.length - 1; f >= 0; f--) {
    const frame = OUTER_CTES[f]!;
    const i = frame.ctes.findIndex((statement) => statement.value === built);
    if (i >= 0) return { frame, visible: frame.ctes[i]!.recursive === true ? i + 1 : i };
  }
  return undefined;
}

/**
 * `compiler` with a `toSQL()` under which what it compiles inside sees `built`'s CTEs (`ctes`), a CTE
 * body sees only what SQL lets it (`body`), and the names settled for outer CTEs get their database
 * back after (`settled`).
 */
function withCteScope(compiler: unknown, ctes: KnexStatement[] | undefined, body: ReturnType<typeof bodyOf>, settled: KnexStatement[] | undefined, database: string): unknown {
  const target = compiler as { toSQL?: (...args: unknown[]) => unknown } | null;
  if (target === null || typeof target !== 'object' || typeof target.toSQL !== 'function') return compiler;
  const toSQL = target.toSQL;
  target.toSQL = function (this: unknown, ...args: unknown[]): unknown {
    if (ctes !== undefined) OUTER_CTES.push({ ctes, visible: ctes.length });
    const before = body?.frame.visible;
    if (body !== undefined) body.frame.visible = body.visible;
    try {
      return toSQL.apply(this, args);
    } finally {
      if (body !== undefined) body.frame.visible = before!;
      if (ctes !== undefined) OUTER_CTES.pop();
      for (const statement of settled ?? []) statement.schema = database;
    }
  };
  return compiler;
}

/**
 * A `from()` or join that names its own database or a CTE loses the tenant's database. knex's alias
 * object (`{ p: 'persons' }`) is written `persons as p` (knex prefixes the schema to the object
 * itself, `db.[object Object]`); an alias object naming a subquery keeps no schema (the subquery is
 * qualified itself).
 */
function settleName(statement: KnexStatement, ctes: Set<string> | undefined): boolean {
  const table = statement.table;
  if (isAliasObject(table)) {
    const entries = Object.entries(table);
    const [alias, name] = entries[0] ?? [];
    if (entries.length !== 1 || typeof name !== 'string') {
      statement.schema = undefined;
      return true;
    }
    statement.table = `${name} as ${alias}`;
  }
  if (!ownName(statement.table, ctes)) return false;
  statement.schema = undefined;
  return true;
}

/** knex's `{ alias: table }` form: a plain object (not a builder, a raw or a function). */
export function isAliasObject(table: unknown): table is Record<string, unknown> {
  if (table === null || typeof table !== 'object') return false;
  const prototype = Object.getPrototypeOf(table);
  return prototype === Object.prototype || prototype === null;
}

/** A table name that must not be prefixed: `db.table`, or a CTE's name (either with an alias). */
function ownName(table: unknown, ctes: Set<string> | undefined): boolean {
  if (typeof table !== 'string') return false;
  if (namesItsDatabase(table)) return true;
  return ctes !== undefined && ctes.has(table.split(/\s+as\s+/i)[0]!.trim());
}

/**
 * Settles a qualified builder's own names (`unqualifyOwnNames`) when `client` compiles it: a
 * `knex('x')` builder is qualified when it is made, before a `with('x', ...)` may name a CTE `x`,
 * and a model query's joins are added after its database is set. Installed on tenant handles'
 * clients and on the transaction clients made from them (a builder moved with `.transacting()`).
 */
export function settleOwnNamesOnCompile(client: object, database: string, tenantId: string, server: unknown): void {
  const target = client as {
    queryCompiler: (this: unknown, builder: unknown, formatter?: unknown) => unknown;
    customWrapIdentifier: (this: unknown, value: string, origImpl: (value: string) => string, queryContext: unknown) => string;
    [QUALIFIED_CLIENT]?: QualifiedClient;
  };
  const own: QualifiedClient = { database, tenantId, server };
  target[QUALIFIED_CLIENT] = own;
  checksTransactingOf(target);
  const baseCompiler = target.queryCompiler;
  target.queryCompiler = function (this: unknown, builder: unknown, formatter?: unknown): unknown {
    // A builder made on another tenant's qualified client (its `knex('t')`, a model query's
    // toKnexQuery()), compiled here as a subquery or a binding, names that tenant's database: in
    // this statement, on this connection, a cross-tenant read. Refused, as model subqueries are.
    const owner = (builder as { client?: { [QUALIFIED_CLIENT]?: QualifiedClient } } | null)?.client?.[QUALIFIED_CLIENT];
    if (owner !== undefined && foreignTo(owner, own)) throw foreignBuilder(owner.tenantId, tenantId);
    const ctes = ctesOf(builder);
    const body = OUTER_CTES.length === 0 ? undefined : bodyOf(builder);
    const settled = unqualifyOwnNames(builder, database, ctes, body);
    const compiler = baseCompiler.call(this, builder, formatter);
    return ctes === undefined && body === undefined && settled === undefined ? compiler : withCteScope(compiler, ctes, body, settled, database);
  };
  // knex wraps `db.table` part by part through the config's wrapIdentifier: an app's identifier
  // mapper (a snake-case one: `acmeCorp` -> `acme_corp`) would name another tenant's database. The
  // tenant's database is written as it is; every other identifier still goes through the mapper.
  const baseWrap = target.customWrapIdentifier;
  target.customWrapIdentifier = function (this: unknown, value: string, origImpl: (value: string) => string, queryContext: unknown): string {
    return value === database ? origImpl(value) : baseWrap.call(this, value, origImpl, queryContext);
  };
}
