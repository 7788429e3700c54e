/**
 * Draws benchmarks/chart.svg from benchmarks/results/*.json: one horizontal bar per ratio, grouped by
 * benchmark (HTTP, overhead, scale), each against its baseline (1.0) and, where one is set, a target
 * line. A missing or unreadable results file leaves its group with a note instead of bars. No
 * dependencies: the SVG is written by hand.
 *
 * Targets: `targets` in a results file (`{ "<result key>": ratio }`) wins; otherwise the HTTP and
 * overhead groups use 0.97 (the implicit scope within 3% of passing the knex) and the scale group has
 * none.
 *
 * Run: `npm run bench:chart`.
 */
import fs from 'node:fs';
import path from 'node:path';
import { RESULTS_DIR } from './results';

const OUT = path.join(__dirname, 'chart.svg');
const DEFAULT_TARGET = 0.97;

interface ResultsFile {
  date?: string;
  node?: string;
  mariadb?: string;
  machine?: string;
  load?: { before?: string | number; after?: string | number };
  /** A caveat about the run (e.g. other jobs loaded the machine), shown under its panel. */
  note?: string;
  result?: Record<string, unknown>;
  targets?: Record<string, number>;
}

interface Bar {
  label: string;
  value: number;
  /** Our library's figure (drawn in the accent colour) or a comparison. */
  ours: boolean;
  note?: string;
  target?: number;
}

interface Group {
  title: string;
  subtitle: string;
  bars: Bar[];
  /** Shown instead of bars when there are none. */
  missing?: string;
  footer?: string;
}

function read(name: string): ResultsFile | undefined {
  try {
    return JSON.parse(fs.readFileSync(path.join(RESULTS_DIR, `${name}.json`), 'utf8')) as ResultsFile;
  } catch {
    return undefined;
  }
}

function num(record: Record<string, unknown> | undefined, key: string): number | undefined {
  const value = record?.[key];
  return typeof value === 'number' && Number.isFinite(value) ? value : undefined;
}

function footer(file: ResultsFile): string {
  const date = file.date?.slice(0, 10) ?? 'undated';
  const load = file.load?.before !== undefined ? `, load ${String(file.load.before).split(' ')[0]}` : '';
  const note = file.note === undefined ? '' : ` (${file.note})`;
  return `${date}, Node ${file.node ?? '?'}, MariaDB ${(file.mariadb ?? '?').replace(/-MariaDB.*$/, '')}, ${file.machine ?? ''}${load}${note}`;
}

function targetOf(file: ResultsFile, key: string, fallback: number | undefined): number | undefined {
  return file.targets?.[key] ?? fallback;
}

function httpGroup(): Group {
  const group: Group = { title: 'HTTP: requests/s against the objection recipe', subtitle: 'npm run bench:http; 1.0 = the recipe; higher is better', bars: [] };
  const file = read('http');
  if (file === undefined) return { ...group, missing: 'no benchmarks/results/http.json yet: run npm run bench:http' };
  const r = file.result;
  const add = (key: string, label: string, fallbackTarget: number | undefined, ours = true) => {
    const value = num(r, key);
    if (value !== undefined) group.bars.push({ label, value, ours, target: targetOf(file, key, fallbackTarget) });
  };
  add('ours_vs_passing', 'ours vs Person.query(req.knex)', DEFAULT_TARGET);
  add('ours_vs_passing_side_by_side', 'ours vs Person.query(req.knex), side by side', DEFAULT_TARGET);
  add('ours_vs_bindknex', 'ours vs req.models (bindKnex)', DEFAULT_TARGET);
  // Against an app that never enables an AsyncLocalStorage: what the library costs in all (no target).
  add('ours_vs_passing_no_als', 'ours vs Person.query(req.knex), no ALS', undefined);
  // The A/A control: the recipe against itself in another process, the run's noise floor.
  add('passing_copy_vs_passing', 'recipe vs itself (A/A: the noise)', undefined, false);
  group.footer = footer(file);
  return group;
}

function overheadGroup(): Group {
  const group: Group = {
    title: 'Overhead: findById throughput against Person.query(knex)',
    subtitle: 'npm run bench:overhead; 1 / (time per op ratio); 1.0 = passing the knex; higher is better',
    bars: [],
  };
  const file = read('overhead');
  if (file === undefined) return { ...group, missing: 'no benchmarks/results/overhead.json yet: run npm run bench:overhead' };
  const r = file.result;
  const add = (key: string, label: string, ours: boolean, fallbackTarget: number | undefined) => {
    const ratio = num(r, key);
    // The file records time per op over the baseline's; a target there is one on time (at most).
    const target = file.targets?.[key];
    if (ratio !== undefined && ratio > 0) {
      group.bars.push({ label, value: 1 / ratio, ours, target: target !== undefined ? 1 / target : fallbackTarget });
    }
  };
  add('implicit_vs_passing_c1', 'ours in scope, 1 in flight', true, DEFAULT_TARGET);
  add('implicit_vs_passing_c32', 'ours in scope, 32 in flight', true, DEFAULT_TARGET);
  add('implicit_vs_passing_no_als_c32', 'ours vs passing without ALS, 32', true, undefined);
  add('scope_per_query_vs_passing_c32', 'runWithTenant per query, 32', true, undefined);
  add('bindknex_vs_passing_c32', 'bindKnex (recipe), 32 in flight', false, undefined);
  group.footer = footer(file);
  return group;
}

function scaleGroup(): Group {
  const file = read('scale');
  const tenants = num(file?.result, 'tenants');
  const group: Group = {
    title: `Scale: ${tenants === undefined ? 'thousands of' : tenants.toLocaleString('en-US')} tenant databases on one server`,
    subtitle: 'npm run bench:scale; queries/s over one tenant database on the same connections (1.0); higher is better',
    bars: [],
  };
  if (file === undefined) return { ...group, missing: 'no benchmarks/results/scale.json yet: run npm run bench:scale' };
  const r = file.result;
  const add = (key: string, label: string, ours: boolean, errorKey?: string) => {
    const value = num(r, key);
    if (value === undefined) return;
    const errors = errorKey === undefined ? undefined : num(r, errorKey);
    const bar: Bar = { label, value, ours, target: targetOf(file, key, undefined) };
    if (errors !== undefined && errors > 0) bar.note = `${Math.round(errors * 100)}% errors`;
    group.bars.push(bar);
  };
  add('shared_ratio_uniform', 'shared pool (defaults), uniform tenants', true);
  add('shared_ratio_zipf', 'shared pool (defaults), Zipf tenants', true);
  add('shared_ratio_uniform_vs_plain', 'shared pool (defaults) vs an app with no AsyncLocalStorage, uniform', true);
  add('shared_ratio_zipf_vs_plain', 'shared pool (defaults) vs an app with no AsyncLocalStorage, Zipf', true);
  add('shared_use_ratio_uniform', 'shared pool, USE switching, uniform', true);
  add('shared_use_ratio_zipf', 'shared pool, USE switching, Zipf', true);
  add('shared_inline_ratio_uniform', 'shared pool + inlineSwitch, uniform', true);
  add('shared_inline_ratio_zipf', 'shared pool + inlineSwitch, Zipf', true);
  add('shared_tuned_ratio_uniform', 'shared + inlineSwitch + cold-switch cap, uniform', true);
  add('shared_tuned_ratio_zipf', 'shared + inlineSwitch + cold-switch cap, Zipf', true);
  add('shared_reset_ratio_uniform', 'shared + inlineSwitch + resetSession, uniform', true);
  add('shared_reset_ratio_zipf', 'shared + inlineSwitch + resetSession, Zipf', true);
  add('shared_qualified_ratio_uniform', 'shared + qualifyTables, no cap, uniform', true);
  add('shared_qualified_ratio_zipf', 'shared + qualifyTables, no cap, Zipf', true);
  add('budget_ratio_uniform', 'pool per tenant + budget, uniform', true);
  add('budget_ratio_zipf', 'pool per tenant + budget, Zipf', true);
  add('recipe_ratio_uniform', 'recipe (knex per tenant), uniform', false, 'recipe_error_rate_uniform');
  add('recipe_ratio_zipf', 'recipe (knex per tenant), Zipf', false, 'recipe_error_rate_zipf');
  add('orm_qualified_ratio_uniform', 'plain knex, no switch at all (bound), uniform', false);
  add('orm_qualified_ratio_zipf', 'plain knex, no switch at all (bound), Zipf', false);
  add('server_spread_ratio_uniform', 'raw SQL, all dbs vs one (server), uniform', false);
  add('server_spread_ratio_zipf', 'raw SQL, all dbs vs one (server), Zipf', false);
  group.footer = footer(file);
  return group;
}

const escape = (text: string) => text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

function render(groups: Group[]): string {
  const width = 860;
  const labelWidth = 300;
  const barLeft = labelWidth + 10;
  const barWidth = 420;
  const barHeight = 18;
  const gap = 7;
  const max = Math.max(1.2, ...groups.flatMap((g) => g.bars.map((b) => Math.ceil((b.value + 0.05) * 10) / 10)));
  const x = (value: number) => barLeft + (Math.min(value, max) / max) * barWidth;
  const out: string[] = [];
  let y = 30;
  out.push(`<text x="20" y="${y}" class="h1">objection-tenancy benchmarks</text>`);
  y += 14;
  for (const group of groups) {
    y += 26;
    out.push(`<text x="20" y="${y}" class="h2">${escape(group.title)}</text>`);
    y += 16;
    out.push(`<text x="20" y="${y}" class="sub">${escape(group.subtitle)}</text>`);
    y += 10;
    if (group.bars.length === 0) {
      y += 20;
      out.push(`<text x="20" y="${y}" class="missing">${escape(group.missing ?? 'no figures in the results file')}</text>`);
      y += 6;
      continue;
    }
    const top = y;
    for (const bar of group.bars) {
      y += gap;
      const below = bar.target !== undefined && bar.value < bar.target;
      const cls = below ? 'bar below' : bar.ours ? 'bar ours' : 'bar other';
      out.push(`<text x="${labelWidth}" y="${y + barHeight - 5}" class="label" text-anchor="end">${escape(bar.label)}</text>`);
      out.push(`<rect x="${barLeft}" y="${y}" width="${(x(bar.value) - barLeft).toFixed(1)}" height="${barHeight}" class="${cls}"/>`);
      const text = `${bar.value.toFixed(3)}${bar.note === undefined ? '' : ` (${bar.note})`}`;
      out.push(`<text x="${(x(bar.value) + 6).toFixed(1)}" y="${y + barHeight - 5}" class="value">${escape(text)}</text>`);
      y += barHeight;
    }
    y += gap;
    // Baseline and target lines over the group's bars.
    out.push(`<line x1="${x(1)}" y1="${top}" x2="${x(1)}" y2="${y}" class="baseline"/>`);
    const targets = [...new Set(group.bars.map((b) => b.target).filter((t): t is number => t !== undefined))];
    for (const target of targets) {
      out.push(`<line x1="${x(target).toFixed(1)}" y1="${top}" x2="${x(target).toFixed(1)}" y2="${y}" class="target"/>`);
      out.push(`<text x="${(x(target) - 4).toFixed(1)}" y="${y + 12}" class="tlabel" text-anchor="end">target ${target.toFixed(2)}</text>`);
    }
    out.push(`<text x="${x(1) + 4}" y="${y + 12}" class="blabel">1.0</text>`);
    y += 14;
    if (group.footer !== undefined) {
      y += 12;
      out.push(`<text x="20" y="${y}" class="foot">${escape(group.footer)}</text>`);
    }
  }
  y += 24;
  out.push(`<text x="20" y="${y}" class="foot">bars: blue = objection-tenancy, grey = comparisons (the objection recipe, raw SQL), orange = below its target; dashed = target, solid = baseline</text>`);
  y += 16;
  const style = [
    'text { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; fill: #1a202c; }',
    '.h1 { font-size: 18px; font-weight: 600; }',
    '.h2 { font-size: 14px; font-weight: 600; }',
    '.sub, .foot { font-size: 11px; fill: #4a5568; }',
    '.missing { font-size: 12px; fill: #9b2c2c; font-style: italic; }',
    '.label, .value { font-size: 12px; }',
    '.value { paint-order: stroke; stroke: #ffffff; stroke-width: 3px; }',
    '.tlabel { font-size: 10px; fill: #c53030; }',
    '.blabel { font-size: 10px; fill: #4a5568; }',
    '.bar.ours { fill: #3182ce; } .bar.other { fill: #a0aec0; } .bar.below { fill: #dd6b20; }',
    '.baseline { stroke: #4a5568; stroke-width: 1; }',
    '.target { stroke: #c53030; stroke-width: 1.5; stroke-dasharray: 5 3; }',
  ].join('\n    ');
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y}" viewBox="0 0 ${width} ${y}" role="img" aria-label="objection-tenancy benchmark results">`,
    `  <style>\n    ${style}\n  </style>`,
    `  <rect width="${width}" height="${y}" fill="#ffffff"/>`,
    ...out.map((line) => `  ${line}`),
    '</svg>',
    '',
  ].join('\n');
}

function main(): void {
  const groups = [httpGroup(), overheadGroup(), scaleGroup()];
  fs.writeFileSync(OUT, render(groups));
  const bars = groups.reduce((n, g) => n + g.bars.length, 0);
  const missing = groups.filter((g) => g.bars.length === 0).map((g) => g.title.split(':')[0]);
  console.log(`wrote ${path.relative(process.cwd(), OUT)}: ${bars} bars${missing.length > 0 ? `; no results for ${missing.join(', ')}` : ''}`);
}

main();
