import { Model } from 'objection';
import type { Knex } from 'knex';
import { TenantContextMissingError, TenantMismatchError } from './errors';
import { connectionTenant, currentScope, globalState, isKeyOf, keyOf, liveConnection, liveScope, openTransactionOf, runInScope, runInScopeSync, type TenantKey, type TenantScope } from './scope';
import { namesItsDatabase, qualifiedDatabase } from './qualify-tables';

// Objection's own typings do not describe the members overridden here (unsafeKnex, $$knex, the
// untyped transaction overloads), so the mixin body works on loose types and the result keeps the
// base class's public type.
/* eslint-disable @typescript-eslint/no-explicit-any */
type AnyModelClass = abstract new (...args: any[]) => Model;

const CAPTURED = Symbol('objection-tenancy.scope');
// The arguments of a builder whose model instances must belong to the tenant it runs in (the
// instance guard), checked when it executes: undefined on most builders, a new array on each change.
const GUARDED = Symbol('objection-tenancy.guarded');
const RUN = Symbol('objection-tenancy.run');
// A builder returned by a function bound outside any scope (bindTenant): it runs with no scope too.
const UNSCOPED = Symbol('objection-tenancy.unscoped');
// The tenant of each loaded or created instance. A WeakMap leaves the instance itself untouched
// (a property, even a symbol, shows in spreads and deep equality) and costs less per row than
// Object.defineProperty. Shared through the global state by every copy of the package.
const STAMPS: WeakMap<object, TenantKey> = (globalState.instanceStamps ??= new WeakMap<object, TenantKey>());
// The stamp of rows loaded through an explicit knex the library did not make for a tenant: no scope's.
// Its owner is no tenancy and its id not a valid tenant id (NUL), so it is no scope's tenant.
const UNKNOWN_CONNECTION: TenantKey = Object.freeze({ owner: Object.freeze({ transaction: () => Promise.reject(new Error('no tenancy')) }), tenantId: '\u0000unknown-connection' });
const CENTRAL = Symbol.for('objection-tenancy.centralKnex');
const TENANT_AWARE = Symbol.for('objection-tenancy.tenantAware');

/** A graph argument (upsertGraph, insertGraph with relate): its related instances are guarded too. */
class GraphArgument {
  constructor(readonly value: unknown) {}
}

// The builder whose SQL statement is being built (objection's executeOnBuild, synchronous): a child
// query made for it then (a join, a filter subquery) becomes part of that one statement. Kept in the
// process-wide state: with the package loaded twice, a parent model of one copy builds and a child of
// the other decides (a module variable let a join between a central and a tenant model run).

type TableMetadataCache = Map<string, { columns: string[] } | Promise<{ columns: string[] }>>;
/** Table metadata per tenant connection (see TenantAwareModel.fetchTableMetadata), then per model class. */
const TABLE_METADATA = new WeakMap<object, WeakMap<object, TableMetadataCache>>();
/**
 * The last metadata fetched per model class and table, whichever tenant's: what objection's own cache
 * held before, for builds outside any scope (`toKnexQuery()` of a `withGraphJoined` builder).
 */
const LAST_METADATA = new WeakMap<object, Map<string, { columns: string[] }>>();

/**
 * The table-metadata cache of `modelClass` for the current scope's tenant connection: `undefined`
 * outside a scope, for a pinned or central model, or for a query given another connection than the
 * scope's (its builder's or an explicit knex), which keep objection's own cache per class.
 */
function tenantMetadata(modelClass: any, parentBuilder: any, knex: Knex | null | undefined): TableMetadataCache | undefined {
  if (pinned(modelClass)) return undefined;
  const scope = currentScope();
  if (scope === undefined) return undefined;
  const key = connectionTenant(liveConnection(scope));
  if (key === undefined) return undefined;
  let explicit: object | undefined = knex ?? undefined;
  if (explicit === undefined && parentBuilder != null && typeof parentBuilder.knex === 'function') explicit = parentBuilder.knex() ?? undefined;
  if (explicit !== undefined && connectionTenant(explicit) !== key) return undefined;
  let perClass = TABLE_METADATA.get(key);
  if (perClass === undefined) TABLE_METADATA.set(key, (perClass = new WeakMap()));
  let cache = perClass.get(modelClass);
  if (cache === undefined) perClass.set(modelClass, (cache = new Map()));
  return cache;
}

/** True when the class (not a parent) was given its own knex: `bindKnex()` or `Model.knex(k)`. */
function hasOwnKnex(modelClass: object): boolean {
  return Object.prototype.hasOwnProperty.call(modelClass, '$$knex');
}

/** True when the class's connection is explicit (own knex, or a central model): the scope is not used. */
function pinned(modelClass: any): boolean {
  return hasOwnKnex(modelClass) || modelClass[CENTRAL] !== undefined;
}

function centralKnexOf(modelClass: any): Knex {
  const source = modelClass[CENTRAL] as Knex | (() => Knex);
  // A knex instance is a function too; a getter has no `client`.
  return 'client' in source ? (source as Knex) : (source as () => Knex)();
}

function missing(modelClass: { name: string }): TenantContextMissingError {
  return new TenantContextMissingError(
    `${modelClass.name} query without a tenant scope. Run it inside tenancy.middleware(), runWithTenant(id, fn), ` +
      `or pass a knex explicitly with ${modelClass.name}.query(knex) / ${modelClass.name}.bindKnex(knex).`,
  );
}

function customBuilderError(modelClass: { name: string }, example: string): TypeError {
  return new TypeError(
    `${modelClass.name}.QueryBuilder does not extend the query builder of its base model, so its queries would ` +
      `lose the tenant scope and its guards. Extend that one instead of objection's QueryBuilder: ${example}.`,
  );
}

/**
 * The knex a child query (objection's `childQueryOf`: eager and graph queries, relate, joins) must use
 * when it is not its parent's. Objection hands the child the parent's context, knex included
 * (QueryBuilderOperationSupport#childQueryOf), but a central model under a tenant query keeps its
 * central knex, and a tenant model under a central (or own-knex) query takes the scope's: `null`
 * when there is none. `undefined`: the parent's, objection's way (same kind of model, or a child
 * bound with bindKnex).
 */
function childKnex(child: any, parent: any): Knex | null | undefined {
  const childClass = child.modelClass();
  if (hasOwnKnex(childClass)) return undefined;
  const parentClass = parent.modelClass();
  if (childClass[CENTRAL] !== undefined) {
    const central = centralKnexOf(childClass);
    // A central parent on the same knex may run in a transaction of it: the child joins it.
    if (parentClass[CENTRAL] !== undefined && !hasOwnKnex(parentClass) && centralKnexOf(parentClass) === central) return undefined;
    return central;
  }
  if (childClass[TENANT_AWARE] !== true || (parentClass[TENANT_AWARE] === true && !pinned(parentClass))) return undefined;
  const scope: TenantScope | undefined = child[CAPTURED] ?? currentScope();
  return scope === undefined ? null : liveConnection(scope);
}

/**
 * The knex to give a child query instead of its parent's (see childKnex), or `undefined` to leave it
 * to objection. A child that needs another connection while its parent's statement is being built
 * is part of that statement (a join): one statement runs on one connection, so that is an error.
 * @throws {TypeError} for such a join; {TenantContextMissingError} for a tenant child with no scope.
 */
function ownChildKnex(child: any, parent: any): Knex | undefined {
  const knex = childKnex(child, parent);
  if (knex === undefined || knex === parent.unsafeKnex()) return undefined;
  if (parent === globalState.building) {
    const which = child.modelClass()[CENTRAL] !== undefined ? 'the central database' : "the tenant's database";
    throw new TypeError(
      `A ${parent.modelClass().name} query cannot join ${child.modelClass().name}: it is in another database (${which}), ` +
        'and one SQL statement runs on one connection. Fetch the relation with withGraphFetched() instead of ' +
        'withGraphJoined() or joinRelated().',
    );
  }
  if (knex === null) throw missing(child.modelClass());
  return knex;
}

/** Runs objection's `executeOnBuild` of `builder` (synchronous) with `globalState.building` set to it. */
function whileBuilding<T>(builder: object, build: () => T): T {
  const outer = globalState.building;
  globalState.building = builder;
  try {
    return build();
  } finally {
    globalState.building = outer;
  }
}

/**
 * objection's `childQueryOf` (`base`), where objection hands a child query its parent's context,
 * knex included: a child that belongs on another connection (central under tenant, tenant under
 * central) gets a copy of that context with its own knex (the parent's is shared with its other children).
 */
function childQueryWithOwnKnex(child: any, parent: any, options: any, base: (options: any) => any): any {
  const knex = parent == null ? undefined : ownChildKnex(child, parent);
  if (knex === undefined) return base(options);
  return base({ ...options, fork: true }).knex(knex);
}

/**
 * The instance guard (objection #1616: instances do not carry their connection). Instances remember
 * the tenant they were loaded or created in; using one in another tenant's scope is an error, not a
 * silent read of the wrong database. Instances built outside any scope take the first scope they meet.
 */
function checkInstance(instance: any, scope: TenantScope): TenantMismatchError | undefined {
  const modelClass = instance.constructor;
  if (modelClass[CENTRAL] !== undefined) return undefined;
  // A class bound to a knex of its own (bindKnex, objection's per-request recipe): its rows are that
  // knex's tenant's, whatever scope they were loaded in.
  const stamp = hasOwnKnex(modelClass) ? (connectionTenant(modelClass.knex()) ?? UNKNOWN_CONNECTION) : STAMPS.get(instance);
  if (stamp === undefined) {
    stamp_(instance, keyOf(scope));
    return undefined;
  }
  if (isKeyOf(stamp, scope)) return undefined;
  if (stamp !== UNKNOWN_CONNECTION) {
    const error = new TenantMismatchError(stamp.tenantId, scope.tenantId);
    if (stamp.tenantId === scope.tenantId) error.message = `A model instance of tenant "${stamp.tenantId}" of another tenancy was used inside the scope of tenant "${scope.tenantId}" of this one. Load the instance again inside this scope.`;
    return error;
  }
  const error = new TenantMismatchError('unknown', scope.tenantId);
  error.message =
    `A model instance loaded through an explicit knex that objection-tenancy did not open for a tenant was used inside the scope of tenant "${scope.tenantId}", ` +
    'so its database is unknown. Pass that knex again (`instance.$query(knex)`), or load the instance inside this scope.';
  return error;
}

/** The first instance among `value` (one, or an array) that belongs to another tenant than `scope`'s. */
function mismatchIn(value: unknown, scope: TenantScope | undefined): TenantMismatchError | undefined {
  if (scope === undefined) return undefined;
  for (const item of Array.isArray(value) ? value : [value]) {
    if (!(item instanceof Model)) continue;
    const error = checkInstance(item, scope);
    if (error !== undefined) return error;
  }
  return undefined;
}

/** The same through a graph: `value`'s instances and those under its relations, as objects or instances. */
function graphMismatch(value: unknown, modelClass: any, scope: TenantScope, seen: Set<object>): TenantMismatchError | undefined {
  if (value === null || typeof value !== 'object' || seen.has(value)) return undefined;
  seen.add(value);
  if (Array.isArray(value)) {
    for (const item of value) {
      const error = graphMismatch(item, modelClass, scope, seen);
      if (error !== undefined) return error;
    }
    return undefined;
  }
  if (value instanceof Model) {
    const error = checkInstance(value, scope);
    if (error !== undefined) return error;
    modelClass = value.constructor;
  } else if (Object.getPrototypeOf(value) !== Object.prototype) {
    return undefined;
  }
  for (const name of modelClass.getRelationNames() as string[]) {
    const related = (value as Record<string, unknown>)[name];
    if (related == null) continue;
    const error = graphMismatch(related, modelClass.getRelation(name).relatedModelClass, scope, seen);
    if (error !== undefined) return error;
  }
  return undefined;
}

function holdsInstance(value: unknown): boolean {
  return value instanceof Model || (Array.isArray(value) && value.some((item) => item instanceof Model));
}

/**
 * Guards the instances in `value` (or, with `graph`, in the graph `value`) where `builder` runs: a
 * tenant builder checks them when it executes, in the scope it executes in, so that every order of
 * building and awaiting is covered; another builder (a central model on objection's Model) checks
 * them now, in the current scope.
 */
function guard<B>(builder: B, value: unknown, graph = false): B {
  if (graph ? value === null || typeof value !== 'object' : !holdsInstance(value)) return builder;
  const target = builder as any;
  if (!(GUARDED in target)) return failing(target, mismatchIn(value, currentScope()));
  const entry = graph ? new GraphArgument(value) : value;
  target[GUARDED] = target[GUARDED] === undefined ? [entry] : [...target[GUARDED], entry];
  return builder;
}

/**
 * The scope a tenant builder executes in, for the instance guard: the captured or current scope when
 * the builder runs on its connection; for an explicit connection (a knex given to query(), a class
 * bound to one), that connection's tenant when the library opened it, none for a knex it did not.
 */
function executionScope(builder: any): TenantScope | undefined {
  const modelClass = builder.modelClass();
  const knex = builder.internalContext().knex ?? (hasOwnKnex(modelClass) ? modelClass.knex() : null);
  const scope: TenantScope | undefined = builder[CAPTURED] ?? currentScope();
  if (knex == null || (scope !== undefined && (knex === scope.trx || knex === scope.knex))) return scope;
  const key = connectionTenant(knex);
  return key === undefined ? undefined : { owner: key.owner, tenantId: key.tenantId, knex, key };
}

function guardedMismatch(builder: any, guarded: readonly unknown[]): TenantMismatchError | undefined {
  const scope = executionScope(builder);
  if (scope === undefined) return undefined;
  for (const entry of guarded) {
    const error =
      entry instanceof GraphArgument
        ? graphMismatch(entry.value, builder.modelClass(), scope, new Set())
        : mismatchIn(entry, scope);
    if (error !== undefined) return error;
  }
  return undefined;
}

/**
 * The tenant whose connection a statement built by `builder` on `knex` runs on: its scope's when
 * `knex` is the scope's knex or transaction, else the tenant the library opened `knex` for (a
 * tenant's knex or handle, a transaction of one); `undefined` for any other knex (a central model's,
 * the caller's own).
 */
function statementTenant(builder: any, knex: object): TenantKey | undefined {
  const scope: TenantScope | undefined = builder[CAPTURED] ?? currentScope();
  if (scope !== undefined && (knex === scope.knex || knex === scope.trx)) return keyOf(scope);
  return connectionTenant(knex);
}

function sameTenant(a: TenantKey, b: TenantKey): boolean {
  return a.owner === b.owner && a.tenantId === b.tenantId;
}

/** Where a statement runs, for the messages below. */
function statementPlace(into: TenantKey | undefined, from: TenantKey): string {
  if (into === undefined) return 'on another connection (a central model or an explicit knex)';
  return into.tenantId === from.tenantId ? `in tenant "${into.tenantId}" of another tenancy` : `in tenant "${into.tenantId}"`;
}

/**
 * Why `subquery` cannot be compiled into `parent`'s statement, if it cannot. Its SQL runs on the
 * parent's connection, so it must belong there:
 * - built in a scope, or on a tenant's connection (`query(knexOfB)`, a transaction of B, a class bound
 *   to B's knex): only into a statement of that tenant. Elsewhere it would read or write its own
 *   tenant's database with qualifyTables (a cross-tenant read) or the other's tables without.
 * - a central model: never into a tenant's statement, where its table name would be read in the
 *   tenant's database (unless its `tableName` names its database).
 * - a tenant model built outside any scope: takes the statement's connection, so never into a
 *   central model's statement, where it has no tenant.
 * A knex the library did not open (the subquery's or the statement's) is the caller's and is not checked.
 */
function subqueryError(subquery: any, parent: any): Error | undefined {
  const knex = parent.unsafeKnex();
  // A partial builder (objection's `where((b) => ...)`, `whereExists((b) => ...)`) is part of its
  // parent's statement, of the parent's class, and has no connection of its own.
  if (knex === null || subquery.isPartial()) return undefined;
  const subClass = subquery.modelClass();
  const captured: TenantScope | undefined = subquery[CAPTURED];
  if (captured !== undefined) {
    if (knex === subquery.unsafeKnex()) return undefined;
    const into = statementTenant(parent, knex);
    const from = keyOf(captured);
    if (into !== undefined && sameTenant(into, from)) return undefined;
    const error = new TenantMismatchError(from.tenantId, into?.tenantId ?? from.tenantId);
    error.message =
      `A query built in the scope of tenant "${from.tenantId}" was used as a subquery of a query that runs ${statementPlace(into, from)}. ` +
      'Build the subquery where the query runs (inside the same scope, or outside any scope to take the query\'s).';
    return error;
  }
  if (subClass[CENTRAL] !== undefined && !hasOwnKnex(subClass)) {
    if (namesItsDatabase(subClass.getTableName())) return undefined;
    const into = statementTenant(parent, knex);
    if (into === undefined) return undefined;
    return new TypeError(
      `A ${subClass.name} query (a central model) cannot be a subquery of a query that runs in tenant "${into.tenantId}": ` +
        `one SQL statement runs on one connection, and its table would be read in the tenant's database. Run it first ` +
        `and pass its result (whereIn('id', await ${subClass.name}.query().select('id').then((rows) => rows.map((r) => r.id)))), ` +
        `or, when both databases are on one server, name the central database in its tableName ('central.${subClass.getTableName()}').`,
    );
  }
  const own = subquery.internalContext().knex ?? (hasOwnKnex(subClass) ? subClass.knex() : undefined);
  if (own != null) {
    if (own === knex) return undefined;
    const from = connectionTenant(own);
    if (from === undefined) return undefined;
    const into = statementTenant(parent, knex);
    if (into !== undefined && sameTenant(into, from)) return undefined;
    const error = new TenantMismatchError(from.tenantId, into?.tenantId ?? from.tenantId);
    error.message =
      `A query on the connection of tenant "${from.tenantId}" (an explicit knex or transaction, or a class bound to one) was used as a subquery ` +
      `of a query that runs ${statementPlace(into, from)}. Build the subquery on the connection the query runs on.`;
    return error;
  }
  // Built outside any scope, it takes the statement's connection (see subqueryOf): only a central
  // model's has no tenant for it. A knex the library did not open is the caller's, as above.
  const parentClass = parent.modelClass();
  if (subClass[TENANT_AWARE] !== true || parentClass[CENTRAL] === undefined || hasOwnKnex(parentClass)) return undefined;
  const scope = currentScope();
  if (scope === undefined) return missing(subClass);
  const error = new TenantMismatchError(scope.tenantId, scope.tenantId);
  error.message =
    `A ${subClass.name} query (a tenant model) was used as a subquery of a query that runs on another connection (a central model or an explicit knex), ` +
    'where it has no tenant. Run it first and pass its result, or build the outer query on the tenant\'s connection.';
  return error;
}

function stamp_(instance: object, key: TenantKey): void {
  STAMPS.set(instance, key);
}

/**
 * The tenant of the rows a builder loads or returns when it runs on an explicit knex other than its
 * scope's (`Person.query(knexOfB)` inside A, or outside any scope): that knex's tenant when the library
 * made it (a tenant's knex or handle, a transaction of one), else UNKNOWN_CONNECTION, never the
 * scope's. `undefined` for a builder on its scope's connection (or a class bound to its own knex).
 */
function explicitConnectionTenant(builder: any): TenantKey | undefined {
  const knex = builder.internalContext().knex;
  if (knex == null) return undefined;
  const scope: TenantScope | undefined = builder[CAPTURED] ?? currentScope();
  if (scope !== undefined && (knex === scope.knex || knex === scope.trx)) return undefined;
  return connectionTenant(knex) ?? UNKNOWN_CONNECTION;
}

/**
 * Stamps the tenant-aware instances in a query's result with `key`, over the stamp they took from
 * the scope when they were made: arrays, page()/range()'s `{ results, total }`, and related instances
 * under any name (withGraphJoined('pets as dogs') puts them under the alias), down to a pinned model,
 * whose own tenant relations ran on the scope's connection.
 */
function stampLoaded(value: unknown, key: TenantKey, seen: Set<object>): void {
  if (value === null || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  if (Array.isArray(value)) {
    for (const item of value) stampLoaded(item, key, seen);
    return;
  }
  if (value instanceof Model) {
    if (pinned(value.constructor)) return;
    stamp_(value, key);
  } else if (Object.getPrototypeOf(value) !== Object.prototype) {
    return;
  }
  for (const name of Object.keys(value)) {
    const child = (value as Record<string, unknown>)[name];
    if (child instanceof Model || Array.isArray(child)) stampLoaded(child, key, seen);
  }
}

function stampFromScope(instance: any): void {
  if (STAMPS.has(instance) || pinned(instance.constructor)) return;
  const scope = currentScope();
  if (scope !== undefined) stamp_(instance, keyOf(scope));
}


/**
 * A copy of `builder` that runs on `scope`'s connection (its open transaction, else the tenant's
 * knex). The builder itself stays the tenant's, to be awaited (or cloned) again later, concurrently
 * too. objection shares a builder's user context with its clones, and that context's `transaction`
 * reads the builder it was made for: the copy gets one of its own (same values), so that hooks'
 * `context.transaction` is the copy's connection.
 */
function retargeted(builder: any, scope: TenantScope): any {
  const copy = builder.clone();
  copy.knex(liveConnection(scope));
  copy[CAPTURED] = scope;
  const context = copy._context as { userContext?: Record<PropertyKey, unknown> | null };
  const shared = context.userContext;
  if (shared != null && typeof shared.constructor === 'function') {
    // Its values (symbol-keyed ones too), but not objection's own symbol naming its builder, which
    // objection's newMerge would copy as well: the new context's are set back after the copy.
    const own = new (shared.constructor as new (builder: unknown) => Record<PropertyKey, unknown>)(copy);
    const naming = Object.getOwnPropertySymbols(own).map((symbol) => [symbol, own[symbol]] as const);
    Object.assign(own, shared);
    for (const [symbol, value] of naming) own[symbol] = value;
    context.userContext = own;
  }
  return copy;
}

/**
 * Where a builder runs now when not as it was built (see execute()), else `undefined`:
 * - made inside a transaction that has ended since (a promise kept past it): as other work started
 *   in that transaction and run later, its transaction still open, else a transaction of its tenant
 *   open where it is awaited, else the tenant's connection; not knex's untyped "Transaction query
 *   already complete";
 * - made on the tenant's own knex (before any transaction) and awaited where a transaction of its
 *   tenant is open: in the current scope, or further out (A's transaction, then B's scope, then the
 *   query): that transaction, as a query made there would;
 * - made in a transaction and awaited in a deeper open level of it (a savepoint): that level, so
 *   that its hooks' onCommit/onRollback follow the savepoint the statement is undone with.
 */
function elsewhereNow(builder: any, current: TenantScope | undefined = currentScope()): TenantScope | undefined {
  const captured: TenantScope | undefined = builder[CAPTURED];
  if (captured === undefined) return undefined;
  if (captured.trx === undefined) {
    // The hot path (built and awaited in one scope with no transaction): two comparisons.
    if (current === captured || builder.unsafeKnex() !== captured.knex) return undefined;
    return transactionToJoin(captured, current);
  }
  const knex = builder.unsafeKnex();
  // Built on the tenant's own knex in a transaction's scope once that transaction had ended.
  if (knex === captured.knex) return current === captured ? undefined : transactionToJoin(captured, current);
  if (knex === null || !withinTransaction(knex, captured.trx)) return undefined;
  if ((knex as Knex.Transaction).isCompleted()) {
    const live = liveScope(captured);
    const target = transactionToJoin(captured, current);
    if (live.trx === undefined) return target ?? live;
    // Awaited in a deeper open level of the transaction still open (a later savepoint): that level.
    return target?.trx !== undefined && target.trx !== live.trx && !target.trx.isCompleted() && withinTransaction(live.trx, target.trx) ? target : live;
  }
  if (current === captured) return undefined;
  const target = transactionToJoin(captured, current);
  return target?.trx !== undefined && target.trx !== knex && !target.trx.isCompleted() && withinTransaction(knex, target.trx) ? target : undefined;
}

/** Whether `knex` is `trx` or one of the transactions it was opened in (its savepoints' parents). */
function withinTransaction(knex: unknown, trx: Knex.Transaction): boolean {
  for (let level: Knex.Transaction | undefined = trx; level !== undefined; level = (level as { parentTransaction?: Knex.Transaction }).parentTransaction) {
    if (level === knex) return true;
  }
  return false;
}

/** The open transaction of `captured`'s tenant (same tenancy) where `current` runs, or further out. */
function transactionToJoin(captured: TenantScope, current: TenantScope | undefined): TenantScope | undefined {
  if (current === undefined) return undefined;
  const chain = current.trx !== undefined ? current : current.outer;
  return chain === undefined ? undefined : openTransactionOf(chain, captured.owner, captured.tenantId);
}

/** Gives the clone of an instance (and of its related instances) the tenant of the original. */
function stampClone(original: any, copy: any): void {
  if (original === null || typeof original !== 'object' || copy === null || typeof copy !== 'object') return;
  if (Array.isArray(original)) {
    for (let i = 0; i < original.length; i++) stampClone(original[i], copy[i]);
    return;
  }
  if (!(original instanceof Model)) return;
  const stamp = STAMPS.get(original);
  if (stamp !== undefined && !STAMPS.has(copy)) stamp_(copy, stamp);
  for (const name of (original.constructor as any).getRelationNames() as string[]) {
    if (Object.prototype.hasOwnProperty.call(copy, name)) stampClone((original as any)[name], copy[name]);
  }
}

/** A builder that fails at execution with `error` (instance methods reject rather than throw). */
function failing<B extends { runBefore(fn: () => unknown): B }>(builder: B, error: Error | undefined): B {
  return error === undefined ? builder : builder.runBefore(() => Promise.reject(error));
}

/**
 * qualifyTables: the database a model query's knex builder should name, when its knex is a marked
 * tenant handle (or a transaction of one), unless the query names one itself (objection's
 * `withSchema`, or a model `tableName` written `db.table`). What is left unqualified is refused by
 * the server and sent again after a switch: slower, never wrong (see inline-switch.ts).
 */
function qualifyingDatabase(builder: any, knexBuilder: any): string | undefined {
  const database = qualifiedDatabase(builder.unsafeKnex());
  if (database === undefined || builder.internalOptions().schema !== undefined) return undefined;
  if (knexBuilder?._single?.schema !== undefined || namesItsDatabase(builder.modelClass().getTableName())) return undefined;
  return database;
}

/**
 * The tenant of a model instance: the scope it was loaded or created in, or the tenant of the
 * explicit knex it was loaded through (a knex or transaction the library opened for that tenant);
 * `undefined` outside any scope, or when that knex is not one the library opened.
 */
export function instanceTenantId(instance: Model): string | undefined {
  const stamp = STAMPS.get(instance);
  return stamp === undefined || stamp === UNKNOWN_CONNECTION ? undefined : stamp.tenantId;
}

/**
 * @internal Pins a tenant builder made with no scope to no scope: awaited in a tenant's scope, it
 * still finds none and fails closed, rather than borrowing that tenant (objection runs a builder when
 * it is awaited, and a builder made with no scope otherwise takes the scope it is awaited in).
 * Anything else is left alone.
 */
export function pinOutsideScopes(value: unknown): void {
  if (value !== null && typeof value === 'object' && UNSCOPED in value && (value as { [CAPTURED]?: unknown })[CAPTURED] === undefined) {
    (value as { [UNSCOPED]: boolean })[UNSCOPED] = true;
  }
}

/**
 * Makes a model class tenant-aware: its queries, relations, graphs, hooks and transactions use the
 * current tenant scope's connection. An explicit `query(knexOrTrx)`, `bindKnex()` or `Model.knex(k)` on
 * the class itself wins. With no scope and no explicit knex, queries reject with `TenantContextMissingError`.
 * Use it when the app already has a base model; otherwise extend `TenantModel`. A custom query builder
 * must extend the base's `QueryBuilder` (`TenantModel.QueryBuilder`): `query()` throws a `TypeError`
 * when it does not.
 * @example
 * class BaseModel extends tenantAware(Model) {}
 * class Person extends BaseModel { static tableName = 'persons'; }
 */
export function tenantAware<M extends AnyModelClass>(Base: M): M {
  const BaseModel = Base as any;

  class TenantQueryBuilder extends (BaseModel.QueryBuilder as any) {
    // Defined on every builder from construction on, so that all builders share one shape.
    [CAPTURED]: TenantScope | undefined = undefined;
    [GUARDED]: readonly unknown[] | undefined = undefined;
    [UNSCOPED] = false;

    // A builder made in tenant A and awaited in tenant B runs on A, hooks included: the lookup of
    // objection is lazy, so the scope captured at creation is restored around execution.
    execute(): Promise<unknown> {
      if (this[UNSCOPED]) return runInScopeSync(undefined, () => this[RUN]());
      const captured = this[CAPTURED];
      if (captured !== undefined) {
        const current = currentScope();
        const moved = elsewhereNow(this, current);
        // Another scope or transaction than it was built in (see elsewhereNow): a copy runs there.
        if (moved !== undefined) return moved === current ? retargeted(this, moved)[RUN]() : runInScope(moved, () => retargeted(this, moved)[RUN]());
        if (current !== captured) return runInScope(captured, () => this[RUN]());
      }
      return this[RUN]();
    }

    // In the scope the query executes in: the instance guard checks that one, whenever and wherever
    // the builder was made.
    [RUN](): Promise<unknown> {
      const guarded = this[GUARDED];
      if (guarded !== undefined) {
        const error = guardedMismatch(this, guarded);
        if (error !== undefined) return Promise.reject(error);
      }
      if ((this as any).unsafeKnex() === null) return Promise.reject(missing((this as any).modelClass()));
      const foreign = explicitConnectionTenant(this);
      if (foreign === undefined) return super.execute();
      // Rows of another connection: stamped as its tenant's (or as unknown), not as the scope's.
      return super.execute().then((result: unknown) => {
        stampLoaded(result, foreign, new Set());
        return result;
      });
    }

    // resultSize() and toKnexQuery() build the query without running it (no before hooks, no
    // execute): the instance guard is checked here for them.
    resultSize(): Promise<number> {
      const count = (): Promise<number> => {
        const error = this[GUARDED] === undefined ? undefined : guardedMismatch(this, this[GUARDED]);
        return error === undefined ? super.resultSize() : Promise.reject(error);
      };
      // Pinned to no scope (see execute()): counted with none, so it fails closed there too.
      if (this[UNSCOPED]) return runInScopeSync(undefined, count);
      const moved = elsewhereNow(this);
      return moved === undefined ? count() : runInScope(moved, () => retargeted(this, moved).resultSize());
    }

    toKnexQuery(...args: unknown[]): any {
      const build = (): any => {
        const error = this[GUARDED] === undefined ? undefined : guardedMismatch(this, this[GUARDED]);
        if (error !== undefined) throw error;
        return super.toKnexQuery(...args);
      };
      if (this[UNSCOPED]) return runInScopeSync(undefined, build);
      const moved = elsewhereNow(this);
      return moved === undefined ? build() : runInScopeSync(moved, () => retargeted(this, moved).toKnexQuery(...args));
    }

    executeOnBuild(): unknown {
      return whileBuilding(this, () => super.executeOnBuild());
    }

    // qualifyTables: a query through a tenant handle names the handle's database (see
    // qualifyingDatabase). On the knex builder rather than with objection's `withSchema`, which costs
    // an operation (and a scan of the operations) per query.
    executeOnBuildKnex(knexBuilder: any): any {
      const database = (this as any).isPartial() ? undefined : qualifyingDatabase(this, knexBuilder);
      // Set first, as objection's own withSchema does, so that the joins the operations add name it too.
      if (database !== undefined) knexBuilder.withSchema(database);
      // Names that carry their own database or a CTE's are settled when the query is compiled
      // (settleOwnNamesOnCompile: the marked knex's client does it).
      return super.executeOnBuildKnex(knexBuilder);
    }

    knex(...args: unknown[]): any {
      if (args.length === 0 && (this as any).unsafeKnex() === null) throw missing((this as any).modelClass());
      return super.knex(...args);
    }

    childQueryOf(parent: any, options?: any): any {
      return childQueryWithOwnKnex(this, parent, options, (opts) => super.childQueryOf(parent, opts));
    }

    subqueryOf(parent: any): any {
      if (parent != null) {
        const error = subqueryError(this, parent);
        if (error !== undefined) throw error;
        // Built outside any scope: the tenant of the statement it is compiled into, not the one
        // current when it is (an outer query on B's explicit knex, inside A's scope). A copy takes
        // that knex: the builder itself may be reused in other tenants' queries.
        if (this[CAPTURED] === undefined && !(this as any).isPartial() && this.internalContext().knex == null && !pinned((this as any).modelClass())) {
          const knex = parent.unsafeKnex();
          if (knex !== null && knex !== (this as any).unsafeKnex()) return super.subqueryOf.call(this.clone().knex(knex), parent);
        }
      }
      return super.subqueryOf(parent);
    }

    // relatedQuery(...).for(instances): instances of another tenant are refused as on `$relatedQuery`.
    for(...args: unknown[]): any {
      if (args.length === 0) return super.for();
      return guard(super.for(args[0]), args[0]);
    }

    // Writes given instances of another tenant: upsertGraph would delete this tenant's children
    // missing from the other's graph, relate would link this tenant's rows by the other's ids.
    upsertGraph(graph: unknown, options?: unknown): any {
      return guard(super.upsertGraph(graph, options), graph, true);
    }

    upsertGraphAndFetch(graph: unknown, options?: unknown): any {
      return guard(super.upsertGraphAndFetch(graph, options), graph, true);
    }

    // Inserted instances become rows of the tenant the insert runs in: an unstamped one (`new
    // Person()`) is stamped with it, so that it cannot later patch or delete another tenant's row
    // of the same id; one of another tenant is refused (objection would give it this tenant's new id,
    // and its own tenant's row of that id would then be the one it patches).
    insert(value?: unknown): any {
      return guard(super.insert(value), value);
    }

    insertAndFetch(value?: unknown): any {
      return guard(super.insertAndFetch(value), value);
    }

    insertGraph(graph: unknown, options?: unknown): any {
      return guard(super.insertGraph(graph, options), graph, true);
    }

    insertGraphAndFetch(graph: unknown, options?: unknown): any {
      return guard(super.insertGraphAndFetch(graph, options), graph, true);
    }

    relate(...args: unknown[]): any {
      return guard(super.relate(...args), args[0]);
    }

    patch(...args: unknown[]): any {
      return guard(super.patch(...args), args[0]);
    }

    update(...args: unknown[]): any {
      return guard(super.update(...args), args[0]);
    }

    patchAndFetch(value: unknown): any {
      return guard(super.patchAndFetch(value), value);
    }

    updateAndFetch(value: unknown): any {
      return guard(super.updateAndFetch(value), value);
    }

    patchAndFetchById(id: unknown, value: unknown): any {
      return guard(super.patchAndFetchById(id, value), value);
    }

    updateAndFetchById(id: unknown, value: unknown): any {
      return guard(super.updateAndFetchById(id, value), value);
    }

    clone(): any {
      const copy = super.clone();
      copy[CAPTURED] = this[CAPTURED];
      copy[GUARDED] = this[GUARDED];
      copy[UNSCOPED] = this[UNSCOPED];
      return copy;
    }
  }

  class TenantAwareModel extends BaseModel {
    static QueryBuilder = TenantQueryBuilder;
    static [TENANT_AWARE] = true;

    static knex(...args: unknown[]): Knex | undefined {
      if (args.length > 0 || hasOwnKnex(this)) return super.knex(...args);
      if ((this as any)[CENTRAL] !== undefined) return centralKnexOf(this);
      const scope = currentScope();
      // null, not a throw: objection probes knex() in places where "none" is a valid answer (child
      // queries given an explicit knex); the builder above fails closed at execution instead.
      return scope === undefined ? undefined : liveConnection(scope);
    }

    static query(trx?: unknown): any {
      let builder;
      if (trx == null && !pinned(this)) {
        const scope = currentScope();
        if (scope !== undefined) {
          builder = super.query(liveConnection(scope));
          builder[CAPTURED] = scope;
        }
      }
      builder ??= super.query(trx);
      // objection's custom-builder pattern (`static QueryBuilder = MyQueryBuilder`) on its own
      // QueryBuilder would silently drop the scope capture and every guard above.
      if (!(builder instanceof TenantQueryBuilder)) {
        throw customBuilderError(this, "`class MyQueryBuilder extends TenantModel.QueryBuilder {}` (or your tenantAware() base's QueryBuilder)");
      }
      return builder;
    }

    static fetchGraph(models: unknown, expression: unknown, options?: { transaction?: unknown }): any {
      return guard(super.fetchGraph(models, expression, options), models);
    }

    /**
     * objection caches a table's columns (read for `withGraphJoined`) per model class: the first
     * tenant's, for every tenant. Tenants mid-way through a migration differ, and another tenant's
     * column list sent its columns to this tenant's SQL (an unknown column), or left this tenant's
     * out. Here the cache is per tenant connection (its pool or handle, and their transactions).
     */
    static fetchTableMetadata(opt: { parentBuilder?: any; knex?: Knex | null; force?: boolean; table?: string | null } = {}): Promise<{ columns: string[] }> {
      const cache = tenantMetadata(this, opt.parentBuilder, opt.knex);
      if (cache === undefined) return super.fetchTableMetadata(opt as never);
      const table = opt.table ?? (opt.parentBuilder ? opt.parentBuilder.tableNameFor(this) : this.getTableName());
      const known = cache.get(table);
      if (opt.force !== true && known !== undefined) return Promise.resolve(known);
      const fetching = (this.query(opt.knex ?? undefined) as any)
        .childQueryOf(opt.parentBuilder ?? null)
        .columnInfo({ table })
        .then(
          (columnInfo: object) => {
            const metadata = { columns: Object.keys(columnInfo) };
            cache.set(table, metadata);
            let last = LAST_METADATA.get(this);
            if (last === undefined) LAST_METADATA.set(this, (last = new Map()));
            last.set(table, metadata);
            return metadata;
          },
          (error: unknown) => {
            cache.delete(table);
            throw error;
          },
        ) as Promise<{ columns: string[] }>;
      cache.set(table, fetching);
      return fetching;
    }

    static tableMetadata(opt: { table?: string } = {}): { columns: string[] } {
      const cache = tenantMetadata(this, undefined, undefined);
      if (cache === undefined) return super.tableMetadata(opt as never) ?? (LAST_METADATA.get(this)?.get(opt.table ?? this.getTableName()) as { columns: string[] }) ?? null;
      const known = cache.get(opt.table ?? this.getTableName());
      // Fetched into objection's own cache (a query given another connection): read from there.
      if (known === undefined) return super.tableMetadata(opt as never);
      // objection's own contract: null while it is being fetched.
      return (known instanceof Promise ? null : known) as { columns: string[] };
    }

    static knexQuery(): Knex.QueryBuilder {
      const knex = this.knex();
      if (knex == null) throw missing(this);
      return knex.table(this.getTableName());
    }

    static transaction(knexOrTrx: unknown, cb?: unknown): Promise<unknown> {
      if (typeof knexOrTrx === 'function' && cb === undefined && !pinned(this)) {
        const scope = currentScope();
        if (scope === undefined) return Promise.reject(missing(this));
        return scope.owner.transaction(knexOrTrx as (trx: Knex.Transaction) => Promise<unknown>);
      }
      return super.transaction(knexOrTrx, cb);
    }

    static startTransaction(knexOrTrx?: unknown): Promise<Knex.Transaction> {
      if (knexOrTrx == null && this.knex() == null) return Promise.reject(missing(this));
      return super.startTransaction(knexOrTrx);
    }

    $setJson(json: unknown, options?: unknown): this {
      const result = super.$setJson(json, options);
      stampFromScope(this);
      return result;
    }

    $setDatabaseJson(json: unknown): this {
      const result = super.$setDatabaseJson(json);
      stampFromScope(this);
      return result;
    }

    $clone(options?: unknown): this {
      const copy = super.$clone(options);
      stampClone(this, copy);
      return copy;
    }

    $query(trx?: unknown): any {
      return guard(super.$query(trx), this);
    }

    // objection's way for instance methods to reach their connection (`this.$knex()('t').where('id',
    // this.id).update(...)`): the scope's, so an instance of another tenant is refused as in $query.
    // A class bound to a knex of its own answers that knex, whatever the scope: nothing to check.
    $knex(): any {
      const error = pinned(this.constructor) ? undefined : mismatchIn(this, currentScope());
      if (error !== undefined) throw error;
      return super.$knex();
    }

    $transaction(): any {
      const error = pinned(this.constructor) ? undefined : mismatchIn(this, currentScope());
      if (error !== undefined) throw error;
      return super.$transaction();
    }

    // A tenant relation's builder guards its owner through for(); a central one on objection's
    // Model has no such hook and checks the owner now.
    $relatedQuery(relationName: string, trx?: unknown): any {
      const builder = super.$relatedQuery(relationName, trx);
      return GUARDED in builder || trx != null ? builder : failing(builder, mismatchIn(this, currentScope()));
    }
  }

  return TenantAwareModel as unknown as M;
}

/**
 * Base model for tenant tables: `Person.query()` anywhere in the app runs on the current tenant.
 * @example
 * class Person extends TenantModel {
 *   static tableName = 'persons';
 * }
 * app.get('/people', async (req, res) => res.json(await Person.query()));
 */
export class TenantModel extends tenantAware(Model) {}

/**
 * Pins a model to a central (non-tenant) knex, for the tenant catalog or shared reference tables,
 * like apartment's `pin_tenant` or stancl's `CentralConnection`. Works on objection's `Model` and on
 * tenant-aware bases; inside a tenant scope (and its transactions) the model still uses `knex`, as a
 * relation of a tenant model too (eager and graph queries), and a tenant relation of a central model
 * uses the scope's tenant. A join between the two (`withGraphJoined`, `joinRelated`) rejects with a
 * `TypeError`: one statement runs on one connection.
 * @param knex the central knex, or a function returning it (resolved at each query).
 * @example
 * class Tenant extends centralModel(BaseModel, catalogKnex) {
 *   static tableName = 'tenants';
 * }
 */
export function centralModel<M extends AnyModelClass>(Base: M, knex: Knex | (() => Knex)): M {
  if (typeof knex !== 'function') throw new TypeError('centralModel(Base, knex): knex must be a knex instance or a function returning one');
  const BaseModel = Base as any;
  // A tenant-aware base's builder already keeps central children on their knex; objection's gets a
  // subclass that does (its childQueryOf would hand them the tenant parent's).
  const CentralQueryBuilder = BaseModel[TENANT_AWARE] === true ? undefined : centralQueryBuilder(BaseModel.QueryBuilder);
  class CentralModel extends BaseModel {
    static [CENTRAL] = knex;
    static QueryBuilder = CentralQueryBuilder ?? BaseModel.QueryBuilder;

    static knex(...args: unknown[]): Knex | undefined {
      if (args.length > 0 || hasOwnKnex(this)) return super.knex(...args);
      return centralKnexOf(this);
    }

    // objection binds a model's relations with the knex it is bound to (`Person.bindKnex(knex)`,
    // `bindTransaction`, `transaction(Person, fn)`): a central relation bound to a tenant's
    // connection would read the tenant's database. It stays on its own.
    static bindKnex(knex: unknown): any {
      return tenantConnection(knex) ? this : super.bindKnex(knex);
    }

    static bindTransaction(trx: unknown): any {
      return tenantConnection(trx) ? this : super.bindTransaction(trx);
    }

    static query(trx?: unknown): any {
      const builder = super.query(trx);
      if (CentralQueryBuilder !== undefined && !(builder instanceof CentralQueryBuilder)) {
        throw customBuilderError(this, '`const Central = centralModel(Model, knex); class MyQueryBuilder extends Central.QueryBuilder {}`');
      }
      return builder;
    }
  }
  return CentralModel as unknown as M;
}

/** Whether `knex` is a knex (or transaction) the library opened for a tenant. */
function tenantConnection(knex: unknown): boolean {
  return (typeof knex === 'function' || (typeof knex === 'object' && knex !== null)) && connectionTenant(knex as object) !== undefined;
}

/** The query builder of central models on a base that is not tenant-aware (see childKnex). */
function centralQueryBuilder(Base: any): any {
  return class CentralQueryBuilder extends Base {
    executeOnBuild(): unknown {
      return whileBuilding(this, () => super.executeOnBuild());
    }

    childQueryOf(parent: any, options?: any): any {
      return childQueryWithOwnKnex(this, parent, options, (opts) => super.childQueryOf(parent, opts));
    }

    subqueryOf(parent: any): any {
      const error = parent == null ? undefined : subqueryError(this, parent);
      if (error !== undefined) throw error;
      return super.subqueryOf(parent);
    }
  };
}
