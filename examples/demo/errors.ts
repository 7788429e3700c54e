import type { ErrorRequestHandler, RequestHandler } from 'express';

/** An error a route throws on purpose: it becomes `statusCode` and `{ error: { code, message } }`. */
export class HttpError extends Error {
  constructor(
    readonly statusCode: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

interface ErrorBody {
  error: { code: string; message: string };
}

const INTERNAL: ErrorBody = { error: { code: 'INTERNAL', message: 'Internal error' } };

// body-parser's own errors (http-errors) carry a status and `expose` but no `code`.
const BODY_PARSER_CODES: Record<string, [code: string, message: string]> = {
  'entity.parse.failed': ['INVALID_JSON', 'The request body is not valid JSON.'],
  'entity.too.large': ['PAYLOAD_TOO_LARGE', 'The request body is too large.'],
};

function toResponse(error: unknown): { status: number; body: ErrorBody } {
  if (error === null || typeof error !== 'object') return { status: 500, body: INTERNAL };
  const { statusCode, code, message, expose, type } = error as Record<string, unknown>;
  const status = typeof statusCode === 'number' && statusCode >= 400 && statusCode <= 599 ? statusCode : undefined;
  // Ours (HttpError) and the library's (TenantError: TENANT_UNKNOWN 404, TENANT_ID_INVALID 400, ...).
  if (status !== undefined && typeof code === 'string') {
    return { status, body: { error: { code, message: typeof message === 'string' ? message : code } } };
  }
  if (status !== undefined && status < 500 && expose === true) {
    const [mapped, text] = BODY_PARSER_CODES[String(type)] ?? ['BAD_REQUEST', String(message)];
    return { status, body: { error: { code: mapped, message: text } } };
  }
  return { status: 500, body: INTERNAL };
}

/** Answers every error as JSON `{ error: { code, message } }`; never sends a stack. */
export const errorHandler: ErrorRequestHandler = (error, _req, res, next) => {
  // Too late to send a status: Express closes the connection.
  if (res.headersSent) return next(error);
  const { status, body } = toResponse(error);
  if (status >= 500) console.error(error);
  const retryAfter = (error as { retryAfter?: unknown } | null)?.retryAfter;
  if (typeof retryAfter === 'number') res.set('Retry-After', String(retryAfter));
  res.status(status).json(body);
};

/** The 404 for routes that do not exist. */
export const notFound: RequestHandler = (_req, res) => {
  res.status(404).json({ error: { code: 'NOT_FOUND', message: 'No such route. Try GET /people.' } });
};
