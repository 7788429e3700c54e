import { Model } from 'objection';
import type { Knex } from 'knex';
import { TenantContextMissingError, TenantMismatchError } from './errors';
import { currentScope, globalState, runInScope, type TenantScope } from './scope';
import { namesItsDatabase, qualifiedDatabase } from './qualify-tables';

// Objection's own typings do not describe the members overridden here (unsafeKnex, $$knex, the
// untyped transaction overloads), so the mixin body works on loose types and the result keeps the
// base class's public type.
/* eslint-disable @typescript-eslint/no-explicit-any */
type AnyModelClass = abstract new (...args: any[]) => Model;

const CAPTURED = Symbol('objection-tenancy.scope');
// The tenant of each loaded or created instance. A WeakMap leaves the instance itself untouched
// (a property, even a symbol, shows in spreads and deep equality) and costs less per row than
// Object.defineProperty. Shared through the global state by every copy of the package.
const STAMPS: WeakMap<object, string> = (globalState.instanceTenants ??= new WeakMap<object, string>());
const CENTRAL = Symbol.for('objection-tenancy.centralKnex');

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

/**
 * The instance guard (objection #1616: instances do not carry their connection). Instances remember
 * the tenant they were loaded or created in; using one in another tenant's scope is an error, not a
 * silent read of the wrong database. Instances built outside any scope take the first scope they meet.
 */
function checkInstance(instance: any): TenantMismatchError | undefined {
  if (pinned(instance.constructor)) return undefined;
  const scope = currentScope();
  if (scope === undefined) return undefined;
  const stamp = STAMPS.get(instance);
  if (stamp === undefined) {
    stamp_(instance, scope.tenantId);
    return undefined;
  }
  return stamp === scope.tenantId ? undefined : new TenantMismatchError(stamp, scope.tenantId);
}

/** The first instance among `value` (one, or an array) that belongs to another tenant than the scope's. */
function mismatchIn(value: unknown): TenantMismatchError | undefined {
  for (const item of Array.isArray(value) ? value : [value]) {
    if (!(item instanceof Model)) continue;
    const error = checkInstance(item);
    if (error !== undefined) return error;
  }
  return undefined;
}

function stamp_(instance: object, tenantId: string): void {
  STAMPS.set(instance, tenantId);
}

function stampFromScope(instance: any): void {
  if (STAMPS.has(instance) || pinned(instance.constructor)) return;
  const scope = currentScope();
  if (scope !== undefined) stamp_(instance, scope.tenantId);
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
 * The tenant of a model instance: the scope it was loaded or created in, or `undefined`.
 */
export function instanceTenantId(instance: Model): string | undefined {
  return STAMPS.get(instance);
}

/**
 * Makes a model class tenant-aware: its queries, relations, graphs, hooks and transactions use the
 * current tenant scope's connection. An explicit `query(knexOrTrx)`, `bindKnex()` or `Model.knex(k)` on
 * the class itself wins. With no scope and no explicit knex, queries reject with `TenantContextMissingError`.
 * Use it when the app already has a base model; otherwise extend `TenantModel`.
 * @example
 * class BaseModel extends tenantAware(Model) {}
 * class Person extends BaseModel { static tableName = 'persons'; }
 */
export function tenantAware<M extends AnyModelClass>(Base: M): M {
  const BaseModel = Base as any;

  class TenantQueryBuilder extends (BaseModel.QueryBuilder as any) {
    // Defined on every builder from construction on, so that all builders share one shape.
    [CAPTURED]: TenantScope | undefined = undefined;

    // A builder made in tenant A and awaited in tenant B runs on A, hooks included: the lookup of
    // objection is lazy, so the scope captured at creation is restored around execution.
    execute(): Promise<unknown> {
      const captured = this[CAPTURED];
      if (captured !== undefined && currentScope() !== captured) return runInScope(captured, () => super.execute());
      if ((this as any).unsafeKnex() === null) return Promise.reject(missing((this as any).modelClass()));
      return super.execute();
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

    // relatedQuery(...).for(instances): instances of another tenant are refused as on `$relatedQuery`.
    for(...args: unknown[]): any {
      if (args.length === 0) return super.for();
      const builder = super.for(args[0]);
      return this[CAPTURED] === undefined ? builder : failing(builder as any, mismatchIn(args[0]));
    }

    clone(): any {
      const copy = super.clone();
      copy[CAPTURED] = this[CAPTURED];
      return copy;
    }
  }

  class TenantAwareModel extends BaseModel {
    static QueryBuilder = TenantQueryBuilder;

    static knex(...args: unknown[]): Knex | undefined {
      if (args.length > 0 || hasOwnKnex(this)) return super.knex(...args);
      if ((this as any)[CENTRAL] !== undefined) return centralKnexOf(this);
      const scope = currentScope();
      // null, not a throw: objection probes knex() in places where "none" is a valid answer (child
      // queries given an explicit knex); the builder above fails closed at execution instead.
      return scope === undefined ? undefined : (scope.trx ?? scope.knex);
    }

    static query(trx?: unknown): any {
      if (trx == null && !pinned(this)) {
        const scope = currentScope();
        if (scope !== undefined) {
          const builder = super.query(scope.trx ?? scope.knex);
          builder[CAPTURED] = scope;
          return builder;
        }
      }
      return super.query(trx);
    }

    static fetchGraph(models: unknown, expression: unknown, options?: { transaction?: unknown }): any {
      const builder = super.fetchGraph(models, expression, options);
      return options?.transaction == null && !pinned(this) ? failing(builder, mismatchIn(models)) : builder;
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

    $query(trx?: unknown): any {
      return failing(super.$query(trx), trx == null ? checkInstance(this) : undefined);
    }

    $relatedQuery(relationName: string, trx?: unknown): any {
      return failing(super.$relatedQuery(relationName, trx), trx == null ? checkInstance(this) : undefined);
    }

    $fetchGraph(expression: unknown, options?: { transaction?: unknown }): any {
      return failing(super.$fetchGraph(expression, options), options?.transaction == null ? checkInstance(this) : undefined);
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
 * tenant-aware bases; inside a tenant scope (and its transactions) the model still uses `knex`.
 * @param knex the central knex, or a function returning it (resolved at each query).
 * @example
 * class Tenant extends centralModel(BaseModel, catalogKnex) {
 *   static tableName = 'tenants';
 * }
 */
export function centralModel<M extends AnyModelClass>(Base: M, knex: Knex | (() => Knex)): M {
  if (typeof knex !== 'function') throw new TypeError('centralModel(Base, knex): knex must be a knex instance or a function returning one');
  const BaseModel = Base as any;
  class CentralModel extends BaseModel {
    static [CENTRAL] = knex;

    static knex(...args: unknown[]): Knex | undefined {
      if (args.length > 0 || hasOwnKnex(this)) return super.knex(...args);
      return centralKnexOf(this);
    }
  }
  return CentralModel as unknown as M;
}
