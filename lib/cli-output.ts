/**
 * What the CLI prints: a live progress bar on a terminal (redrawn in place with `\r`), one plain line
 * per tenant otherwise (CI logs, pipes), a summary, and the JSON report of `--json`.
 */
import type { TenantProgress, TenantResult, TenantsReport } from './tenant-runner';

/** The stream progress goes to (stderr): a TTY gets the bar. */
export interface ProgressStream {
  write(text: string): unknown;
  isTTY?: boolean | undefined;
  columns?: number | undefined;
}

/** Receives each tenant's result while a run goes on. */
export interface ProgressPrinter {
  onResult(result: TenantResult, progress: TenantProgress): void;
  /** Ends the bar (a final newline) before other output. */
  finish(): void;
}

type AnyResult = TenantResult & { migrations?: readonly string[]; error?: unknown; result?: unknown };

const BAR_WIDTH = 24;
const REDRAW_MS = 80;

// Letters, digits, marks, punctuation and symbols of any script: nothing that moves the cursor,
// starts an escape sequence (C0 and C1 controls), reorders or hides text (bidi and zero-width format
// characters) or breaks a line (U+2028), and no space, which would let an id read as "acme applied".
const PRINTABLE = /^[\p{L}\p{N}\p{M}\p{P}\p{S}]+$/u;
const UNPRINTABLE = /[^\p{L}\p{N}\p{M}\p{P}\p{S} ]/gu;

/**
 * @internal A tenant id as printed: as it is when every character is printable, else quoted with the
 * rest escaped (`"\r\u001b[Kacme"`). Ids come from the catalog before they are validated, and an id
 * such as "\r\x1b[Kacme applied 12 ms" would otherwise overwrite a line of the terminal or forge one in
 * a CI log.
 */
export function printableId(id: string): string {
  if (PRINTABLE.test(id)) return id;
  // JSON escapes C0 controls, quotes, backslashes and lone surrogates; the rest is done here.
  return JSON.stringify(id).replace(UNPRINTABLE, escapeChar);
}

/** `text` with its control, invisible and line-breaking characters escaped (`\u001b`), unquoted. */
function printableText(text: string): string {
  return text.replace(UNPRINTABLE, escapeChar);
}

function escapeChar(char: string): string {
  let escaped = '';
  for (let i = 0; i < char.length; i++) escaped += `\\u${char.charCodeAt(i).toString(16).padStart(4, '0')}`;
  return escaped;
}

/** @internal One tenant's result as one short line. */
export function describeResult(result: AnyResult): string {
  const id = printableId(String(result.tenantId));
  // Error messages and file names may carry a tenant id or other text: escaped like the id.
  if (result.status === 'failed') return `${id} failed: ${printableText(errorMessage(result.error))}`;
  const names = result.migrations !== undefined && result.migrations.length > 0 ? ` (${printableText(result.migrations.join(', '))})` : '';
  return `${id} ${result.status}${names} ${result.durationMs} ms`;
}

/** @internal An error's message, or the best string form of a thrown value (one with none included). */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return String(error);
  } catch {
    // A value with no string form (Object.create(null), a throwing toString): the report goes on.
    return Object.prototype.toString.call(error);
  }
}

/** @internal The progress printer for `stream`: a bar on a TTY, plain lines otherwise. */
export function createProgress(stream: ProgressStream, label: string): ProgressPrinter {
  if (stream.isTTY !== true) {
    return {
      onResult(result, { done, total }) {
        stream.write(`[${done}/${total}] ${describeResult(result)}\n`);
      },
      finish() {},
    };
  }
  const started = Date.now();
  const counts: Record<string, number> = {};
  let drawn = false;
  let lastDraw = 0;
  const draw = ({ done, total }: TenantProgress): void => {
    const filled = total === 0 ? BAR_WIDTH : Math.round((done / total) * BAR_WIDTH);
    const tally = Object.entries(counts).map(([status, n]) => `${status} ${n}`).join('  ');
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    const line = `${label} [${'#'.repeat(filled)}${'.'.repeat(BAR_WIDTH - filled)}] ${done}/${total}  ${tally}  ${seconds}s`;
    stream.write(`\r\x1b[K${line.slice(0, Math.max(20, (stream.columns || 120) - 1))}`);
    drawn = true;
    lastDraw = Date.now();
  };
  return {
    onResult(result, progress) {
      counts[result.status] = (counts[result.status] ?? 0) + 1;
      if (result.status === 'failed') {
        // A failure gets its own line above the bar, so it is still on screen at the end.
        stream.write(`\r\x1b[K${describeResult(result)}\n`);
        drawn = false;
      }
      if (!drawn || progress.done === progress.total || Date.now() - lastDraw >= REDRAW_MS) draw(progress);
    },
    finish() {
      if (drawn) stream.write('\n');
      drawn = false;
    },
  };
}

/** @internal The human summary of a report: counts, then failures (and pending tenants for a status). */
export function summarize(label: string, report: TenantsReport<TenantResult>): string {
  const lines: string[] = [];
  const tally = Object.entries(report.counts).map(([status, n]) => `${status} ${n}`).join(', ');
  lines.push(`${label}: ${report.tenants.length} tenant(s), ${tally || 'nothing to do'} in ${(report.durationMs / 1000).toFixed(1)} s`);
  if (report.aborted) lines.push('interrupted: tenants in progress finished, the others were skipped');
  for (const result of report.tenants as readonly AnyResult[]) {
    if (result.status === 'failed' || result.status === 'pending') lines.push(`  ${describeResult(result)}`);
  }
  return `${lines.join('\n')}\n`;
}

/** @internal An error as plain JSON: name, code, message, the tenant fields, and its cause chain. */
export function errorToJson(error: unknown, depth = 0): unknown {
  if (!(error instanceof Error)) return error;
  const fields = error as Error & Record<string, unknown>;
  const json: Record<string, unknown> = { name: error.name, message: error.message };
  for (const key of ['code', 'errno', 'statusCode', 'tenantId', 'migration', 'step']) {
    if (fields[key] !== undefined) json[key] = fields[key];
  }
  if (error.cause !== undefined && depth < 3) json.cause = errorToJson(error.cause, depth + 1);
  return json;
}

/** @internal The `--json` output: the report with its errors as plain objects. */
export function toJson(value: unknown): string {
  const replacer = (_key: string, item: unknown): unknown => {
    if (item instanceof Error) return errorToJson(item);
    if (typeof item === 'bigint') return item.toString();
    return item;
  };
  try {
    return JSON.stringify(value, replacer, 2);
  } catch (error) {
    return JSON.stringify({ error: `the report could not be serialised: ${errorMessage(error)}` });
  }
}
