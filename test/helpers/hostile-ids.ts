/** Hostile tenant ids: what an attacker or a broken client sends where a tenant id is expected. */

const PAYLOADS = [
  "'", '"', '`', ';', '--', '/*', '*/', '#', '%', '_%', '\\', "' OR '1'='1", '" OR ""="', "' OR 1=1 --",
  '"; DROP DATABASE test; --', "'; DROP TABLE persons; --", '`; DROP DATABASE test; --', '1; SELECT SLEEP(5)',
  'UNION SELECT 1', "' UNION SELECT password FROM mysql.user --", '$(id)', '${HOME}', '`id`', '|| ls',
  '../', '..\\', '../../etc/passwd', '..%2f', '%2e%2e%2f', '....//', '/etc/passwd', 'C:\\Windows', '~root',
  '<script>alert(1)</script>', '{{7*7}}', '%00', '%0d%0a', '*', '?', '&', '=', '+', ' ', '.', ',', ':', '@',
  'acme.globex', 'acme globex', 'acme,globex', 'acme/globex', '[acme]', '{"$ne":null}', 'null', 'undefined',
];

const UNICODE = [
  '\u0430cme', // Cyrillic a
  'acm\u0435', // Cyrillic e
  '\uff41\uff43\uff4d\uff45', // fullwidth acme
  'acme\u200b', // zero-width space
  '\u200dacme', // zero-width joiner
  'acme\u200f', // right-to-left mark
  '\u202eemca', // right-to-left override
  'acme\u2066', // left-to-right isolate
  'acme\ufeff', // byte order mark
  'acmé',
  'ácme',
  'acme\u0301', // combining accent
  'ＡＣＭＥ',
  'acme\u00a0', // no-break space
  'acme\u2028', // line separator
  '🏢acme',
  'аcmе',
  'ǅacme',
  'acme\u0000',
  'ａ',
];

const CASE_VARIANTS = ['ACME', 'Acme', 'aCmE', 'acmE', 'GLOBEX', 'Globex', 'gLoBeX', 'ACME-', 'Acme_', 'GLOBEX1'];

/** A small deterministic PRNG, so a failing id can be reproduced. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state * 1664525 + 1013904223) >>> 0;
    return state / 2 ** 32;
  };
}

/**
 * At least 500 hostile ids. None of them names a real tenant (`acme`, `globex`); some are valid by
 * the pattern but unknown (case variants), the rest are invalid.
 */
export function hostileIds(): string[] {
  const ids = new Set<string>();
  for (const p of PAYLOADS) {
    ids.add(p);
    ids.add(`acme${p}`);
    ids.add(`${p}acme`);
    ids.add(`globex${p}globex`);
  }
  for (let code = 0; code < 32; code++) {
    ids.add(`acme${String.fromCharCode(code)}`);
    ids.add(`${String.fromCharCode(code)}acme`);
  }
  ids.add('acme\u007f');
  for (const u of UNICODE) ids.add(u);
  for (const c of CASE_VARIANTS) ids.add(c);
  ids.add('');
  ids.add('a'.repeat(64));
  ids.add('a'.repeat(10_000));
  ids.add('acme'.repeat(2_500));
  ids.add('x'.repeat(1_000) + "'");
  const random = prng(20261204);
  const alphabet = "abc-_'\"`;%\\/.\u0000\u0001\t\u00e9\u0430\u202e\ud83c\udfe2 ";
  while (ids.size < 560) {
    const length = 1 + Math.floor(random() * 40);
    let id = '';
    for (let i = 0; i < length; i++) id += alphabet[Math.floor(random() * alphabet.length)];
    if (id !== 'acme' && id !== 'globex') ids.add(id);
  }
  ids.delete('acme');
  ids.delete('globex');
  return [...ids];
}
