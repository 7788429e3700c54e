import type { IncomingMessage } from 'node:http';
import { InvalidTenantIdError } from './errors';

/**
 * Finds the tenant id of a request: a string, `undefined` (or '') when the request names none, or a
 * promise of either. Whatever it returns is validated before it touches the catalog or a database;
 * a list (repeated header, repeated query parameter) is refused, never joined.
 */
export type TenantResolver = (req: IncomingMessage) => unknown;

/**
 * Reads the tenant id from a header. A header sent twice is refused (Node would join the values).
 * @example
 * app.use(tenancy.middleware({ resolve: fromHeader('x-tenant') }));
 */
export function fromHeader(name: string): TenantResolver {
  const key = name.toLowerCase();
  return (req) => {
    const value = req.headers[key];
    return value !== undefined && sentMoreThanOnce(req.rawHeaders, key) ? [value] : value;
  };
}

/**
 * Whether a header came more than once. Node joins repeated unknown headers with ", "; the raw list
 * tells. (Cheaper than `req.headersDistinct`, which builds an object of every header on each read.)
 */
function sentMoreThanOnce(rawHeaders: readonly string[], key: string): boolean {
  let seen = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length === key.length && name.toLowerCase() === key && ++seen > 1) return true;
  }
  return false;
}

/** Options of `fromSubdomain()`. */
export interface SubdomainOptions {
  /** The app's own domain: `acme.example.com` with `baseDomain: 'example.com'` resolves to `acme`. */
  baseDomain: string;
  /** Subdomains that are not tenants. Default `['www']`. */
  ignore?: readonly string[];
}

/**
 * Reads the tenant id from the subdomain of the `Host` header. The bare domain and `www` resolve to
 * nothing; a host outside `baseDomain` resolves to nothing; a deeper subdomain (`a.b.example.com`)
 * yields an invalid id. Ids are case-sensitive: `ACME.example.com` is not `acme`. `X-Forwarded-Host`
 * is never read (any client can set it): behind a proxy that rewrites `Host` (nginx's default
 * `proxy_set_header Host $proxy_host`) every request names no tenant, so forward the original `Host`.
 */
export function fromSubdomain(options: SubdomainOptions): TenantResolver {
  if (typeof options?.baseDomain !== 'string' || options.baseDomain === '') {
    throw new TypeError('fromSubdomain: options.baseDomain must be a non-empty string');
  }
  const suffix = `.${options.baseDomain.toLowerCase()}`;
  // Host names are case-insensitive: `WWW.example.com` is `www` too.
  const ignore = new Set((options.ignore ?? ['www']).map((name) => name.toLowerCase()));
  return (req) => {
    if (sentMoreThanOnce(req.rawHeaders, 'host')) return [req.headers.host];
    // The name before the port, whatever the port holds (`acme.example.com:` too), as Express reads
    // req.hostname and req.subdomains: a host read another way here would fall through firstOf() to
    // another resolver's tenant while the app's own routing reads this one.
    const raw = req.headers.host ?? '';
    const colon = raw.indexOf(':', raw.startsWith('[') ? raw.indexOf(']') : 0);
    const name = colon === -1 ? raw : raw.slice(0, colon);
    // The root label's dot of a fully qualified name (`acme.example.com.`) is not the host's name; an
    // empty label (`acme.example.com..`) is no host name at all.
    if (/\.\.|^\./.test(name)) throw new InvalidTenantIdError('the Host header is not a host name (an empty label)');
    const host = name.replace(/\.$/, '');
    if (!host.toLowerCase().endsWith(suffix)) return undefined;
    const sub = host.slice(0, -suffix.length);
    return sub === '' || ignore.has(sub.toLowerCase()) ? undefined : sub;
  };
}

/**
 * Reads the tenant id from the path. With a prefix (`fromPath('/t/')`) it is the segment after the
 * prefix (`/t/acme/people` -> `acme`); with a name (`fromPath('tenant')`) it is the route parameter
 * `req.params.tenant`, for `app.use('/t/:tenant', tenancy.middleware({ resolve: fromPath('tenant') }))`.
 */
export function fromPath(prefixOrParam: string): TenantResolver {
  if (typeof prefixOrParam !== 'string' || prefixOrParam === '') {
    throw new TypeError('fromPath: give a path prefix such as "/t/" or a route parameter name such as "tenant"');
  }
  if (!prefixOrParam.startsWith('/')) {
    const param = prefixOrParam.replace(/^:/, '');
    return (req) => (req as IncomingMessage & { params?: Record<string, unknown> }).params?.[param];
  }
  const prefix = (prefixOrParam.endsWith('/') ? prefixOrParam : `${prefixOrParam}/`).toLowerCase();
  return (req) => {
    // Inside a router mounted at a path Express routes on req.url (the path below the mount point);
    // a middleware mounted at the prefix itself (`app.use('/t', ...)`) sees it only in originalUrl.
    const inRouter = segmentAfter(prefix, req.url);
    const whole = segmentAfter(prefix, (req as IncomingMessage & { originalUrl?: string }).originalUrl);
    if (inRouter !== undefined && whole !== undefined && inRouter !== whole) {
      throw new InvalidTenantIdError('the request path names two tenants (below and above the router mount point)');
    }
    const segment = inRouter ?? whole;
    return segment === undefined ? undefined : decode(segment);
  };
}

/**
 * The path segment after `prefix` in `url`, read as Express routes it, or `undefined` when the path
 * does not start with the prefix. Otherwise firstOf() would fall through to another resolver on a
 * URL whose route names a tenant: an absolute-form target (`GET http://host/t/b/...`) routes on its
 * path, and routing ignores case by default (`/T/b/...` reaches `/t/:tenant`).
 * @throws {InvalidTenantIdError} for a path under the prefix that routers may read another way: a
 * backslash (read as `/` by url.parse, which Express falls back to for a target with `#` or spaces)
 * or an empty segment (`/t//acme`).
 */
function segmentAfter(prefix: string, url: string | undefined): string | undefined {
  if (url === undefined) return undefined;
  let path = url.split('?', 1)[0]!;
  const absolute = /^[a-z][a-z0-9+.-]*:\/\/[^/]*(\/.*)?$/i.exec(path);
  if (absolute !== null) path = absolute[1] ?? '/';
  const lower = path.toLowerCase();
  if (!lower.startsWith(prefix)) {
    if (/[\\#]/.test(path) && lower.split('#', 1)[0]!.replaceAll('\\', '/').startsWith(prefix)) {
      throw new InvalidTenantIdError('the request path has a backslash or a fragment where its tenant is');
    }
    return undefined;
  }
  const rest = path.slice(prefix.length);
  const segment = rest.split('/', 1)[0]!;
  if (segment === '' && rest.startsWith('/')) throw new InvalidTenantIdError('the request path has an empty segment where its tenant is');
  if (/[\\#]/.test(segment)) throw new InvalidTenantIdError('the request path has a backslash or a fragment where its tenant is');
  return segment;
}

/**
 * Reads the tenant id from a query-string parameter; a repeated parameter is refused, and so is a
 * target with a `#`: Express reads what follows it as a fragment, not as query (`/?x=1#&tenant=b`
 * has no `req.query.tenant`), so the scope and the app's own reading of the query would disagree.
 */
export function fromQuery(name: string): TenantResolver {
  return (req) => {
    const url = (req as IncomingMessage & { originalUrl?: string }).originalUrl ?? req.url ?? '';
    if (url.includes('#')) throw new InvalidTenantIdError('the request target has a fragment (#), which a query string cannot hold');
    const query = url.indexOf('?');
    if (query < 0) return undefined;
    let values: string[];
    try {
      values = new URLSearchParams(url.slice(query + 1)).getAll(name);
    } catch {
      throw new InvalidTenantIdError('the query string could not be parsed');
    }
    return values.length > 1 ? values : values[0];
  };
}

/**
 * Uses what the app already knows, for example a verified JWT claim set by an auth middleware that
 * runs first. A typed wrapper for documentation; any `(req) => id` works.
 * @example
 * tenancy.middleware({ resolve: fromRequest<Request>((req) => req.user?.tenantId) })
 */
export function fromRequest<R extends IncomingMessage = IncomingMessage>(fn: (req: R) => unknown): TenantResolver {
  return fn as TenantResolver;
}

/** The first resolver that names a tenant wins; resolvers may be async. */
export function firstOf(...resolvers: TenantResolver[]): TenantResolver {
  return async (req) => {
    for (const resolve of resolvers) {
      const id = await resolve(req);
      if (id !== undefined && id !== null && id !== '') return id;
    }
    return undefined;
  };
}

function decode(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new InvalidTenantIdError('the path segment is not valid percent-encoding');
  }
}
