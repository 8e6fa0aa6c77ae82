// The playground: runs scenarios in vmem-wasm, the same zero-import module
// the harness tests under wasmtime, and draws every arena.
//
// Each Run (and each Step) calls the module twice:
//  1. the script as written: its JSON Lines are what the page shows, byte
//     for byte what the native runner prints; `vmem_render` afterwards
//     names the live arenas and caches, and the handle of each allocated
//     segment;
//  2. the same script with `walk A` and `stats A` appended for every live
//     arena A (and `stats C` for every cache C): both commands only read,
//     and the appended lines run after the script's own, so their answers
//     describe the state the script left. Those answers, and only those,
//     feed the drawings and the stats table.
// Step k runs the first k lines as a fresh script, which is what the module
// does with any script, so stepping and running agree by construction.
(function () {
  'use strict';

  const root = document.getElementById('playground');
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const editor = $('pg-editor');
  const gutter = $('pg-gutter');
  const picker = $('pg-example');
  const statusLine = $('pg-status');
  const errorList = $('pg-errors');
  const arenasBox = $('pg-arenas');
  const statsBox = $('pg-stats');
  const outputBox = $('pg-output');
  const stepBox = $('pg-current');
  const SVG = 'http://www.w3.org/2000/svg';
  const encoder = new TextEncoder();
  const decoder = new TextDecoder();

  let wasmModule = null;
  let exports = null;
  // The last line Step ran (0: not stepping).
  let stepAt = 0;

  async function loadModule() {
    const response = await fetch('vmem_wasm.wasm');
    if (!response.ok) throw new Error('vmem_wasm.wasm: HTTP ' + response.status);
    const bytes = await response.arrayBuffer();
    // Zero imports: an empty import object, nothing from the page.
    const { module, instance } = await WebAssembly.instantiate(bytes, {});
    wasmModule = module;
    exports = instance.exports;
  }

  function readOutput(len) {
    const at = exports.vmem_output() >>> 0;
    return decoder.decode(new Uint8Array(exports.memory.buffer, at, len >>> 0));
  }

  // Runs `script` as a fresh scenario: its JSON Lines and readable view.
  async function runScript(script) {
    const bytes = encoder.encode(script);
    try {
      const at = exports.vmem_input(bytes.length) >>> 0;
      new Uint8Array(exports.memory.buffer, at, bytes.length).set(bytes);
      const jsonl = readOutput(exports.vmem_run(bytes.length));
      const view = readOutput(exports.vmem_render());
      return { jsonl, view };
    } catch (trap) {
      const line = exports.vmem_line() >>> 0;
      // A trap leaves the instance half changed: start a fresh one.
      exports = (await WebAssembly.instantiate(wasmModule, {})).exports;
      throw new Error('the module trapped at line ' + line + ': ' + trap.message);
    }
  }

  // The live arenas and caches, and each allocated segment's handle, from
  // the readable view (`arena NAME  quantum ...`, `cache NAME on ARENA ...`,
  // `    START +SIZE alloc  HANDLE`).
  function parseView(view) {
    const arenas = [];
    const caches = [];
    const handles = {};
    let current = null;
    for (const line of view.split('\n')) {
      let m = /^arena (\S+) /.exec(line);
      if (m) {
        current = m[1];
        arenas.push(current);
        handles[current] = {};
        continue;
      }
      m = /^cache (\S+) /.exec(line);
      if (m) {
        caches.push(m[1]);
        continue;
      }
      m = /^ {4}(0x[0-9a-f]+) \+0x[0-9a-f]+ alloc {2}(\S+)/.exec(line);
      if (m && current) handles[current][m[1]] = m[2];
    }
    return { arenas, caches, handles };
  }

  function parseLines(jsonl) {
    return jsonl.split('\n').filter((l) => l.length > 0).map((l) => JSON.parse(l));
  }

  // Runs `script` and everything the page draws from it.
  async function evaluate(script) {
    const shown = await runScript(script);
    const { arenas, caches, handles } = parseView(shown.view);
    const queries = [];
    for (const a of arenas) queries.push(['walk', a], ['stats', a]);
    for (const c of caches) queries.push(['stats', c]);
    const extra = queries.map(([cmd, name]) => cmd + ' ' + name).join('\n');
    const answers = [];
    if (queries.length) {
      // Each appended line answers with exactly one JSON line, after the
      // script's own.
      const probed = await runScript(script + '\n' + extra + '\n');
      answers.push(...parseLines(probed.jsonl).slice(-queries.length));
    }
    const walks = {};
    const stats = [];
    queries.forEach(([cmd, name], i) => {
      const answer = answers[i];
      if (!answer || !answer.ok) return;
      if (cmd === 'walk') walks[name] = answer.segments;
      else stats.push({ name, kind: arenas.includes(name) ? 'arena' : 'cache', stats: answer.stats });
    });
    return { jsonl: shown.jsonl, records: parseLines(shown.jsonl), arenas, handles, walks, stats };
  }

  // --- drawing ------------------------------------------------------------

  const big = (hex) => BigInt(hex);

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function title(node, text) {
    el('title', {}, node).textContent = text;
  }

  // Splits a walk into spans, each with the segments inside it.
  function spansOf(segments) {
    const spans = [];
    for (const s of segments) {
      if (s.type === 'span') spans.push({ span: s, segments: [] });
      else if (spans.length) spans[spans.length - 1].segments.push(s);
    }
    return spans;
  }

  // Widths: each span and segment in proportion to its size, but never
  // under a minimum, so that a 4 KiB page in a 1 GiB span stays visible.
  function widths(sizes, total) {
    const min = Math.min(6, total / Math.max(sizes.length, 1));
    const sum = sizes.reduce((a, b) => a + b, 0n);
    const raw = sizes.map((s) => (sum > 0n ? Number((s * 1000000n) / sum) / 1000000 : 0) * total);
    const small = raw.filter((w) => w < min).length;
    const spare = total - small * min;
    const largeSum = raw.filter((w) => w >= min).reduce((a, b) => a + b, 0);
    return raw.map((w) => (w < min ? min : largeSum > 0 ? (w / largeSum) * spare : min));
  }

  function drawArena(name, segments, handles) {
    const box = document.createElement('figure');
    box.className = 'pg-arena';
    const caption = document.createElement('figcaption');
    box.appendChild(caption);
    const spans = spansOf(segments);
    const width = 1000;
    const gap = 14;
    const height = 74;
    const svg = el('svg', {
      viewBox: '0 0 ' + width + ' ' + height,
      width: '100%',
      'data-arena': name,
      role: 'img',
    });
    svg.setAttribute('aria-label', 'arena ' + name);
    caption.textContent = 'arena ' + name + (spans.length ? '' : ' (no spans)');
    box.appendChild(svg);
    if (!spans.length) return box;
    const usable = width - gap * (spans.length - 1);
    const spanWidths = widths(spans.map((s) => big(s.span.size)), usable);
    let x = 0;
    spans.forEach((entry, i) => {
      const span = entry.span;
      const w = spanWidths[i];
      const end = big(span.start) + big(span.size);
      const outline = el('rect', {
        x, y: 14, width: w, height: 36, class: 'pg-span',
        'data-arena': name, 'data-type': 'span', 'data-start': span.start,
        'data-size': span.size, 'data-imported': String(span.imported),
      }, svg);
      title(outline, 'span [' + span.start + ', 0x' + end.toString(16) + ')' +
        (span.imported ? ', imported' : ''));
      const segWidths = widths(entry.segments.map((s) => big(s.size)), w);
      let sx = x;
      entry.segments.forEach((seg, j) => {
        const sw = segWidths[j];
        const handle = seg.type === 'alloc' ? handles[seg.start] : undefined;
        const attrs = {
          x: sx, y: 16, width: Math.max(sw - 1, 0.5), height: 32,
          class: 'pg-seg pg-' + seg.type,
          'data-arena': name, 'data-type': seg.type,
          'data-start': seg.start, 'data-size': seg.size,
        };
        if (handle) attrs['data-handle'] = handle;
        const rect = el('rect', attrs, svg);
        const segEnd = big(seg.start) + big(seg.size);
        title(rect, seg.type + (handle ? ' ' + handle : '') + '\n[' + seg.start + ', 0x' +
          segEnd.toString(16) + ')\nsize ' + seg.size);
        if (handle && sw > 8 * Math.min(handle.length, 12) * 0.8) {
          const label = el('text', { x: sx + sw / 2, y: 36, class: 'pg-label' }, svg);
          label.textContent = handle;
        }
        sx += sw;
      });
      el('text', { x, y: 64, class: 'pg-addr', 'text-anchor': 'start' }, svg).textContent = span.start;
      el('text', { x: x + w, y: 64, class: 'pg-addr', 'text-anchor': 'end' }, svg).textContent =
        '0x' + end.toString(16);
      x += w + gap;
    });
    return box;
  }

  function drawStats(stats) {
    statsBox.textContent = '';
    if (!stats.length) return;
    const keys = [];
    for (const s of stats) for (const k of Object.keys(s.stats)) if (!keys.includes(k)) keys.push(k);
    const table = document.createElement('table');
    const head = table.createTHead().insertRow();
    for (const k of ['name', 'kind', ...keys]) {
      const th = document.createElement('th');
      th.textContent = k;
      head.appendChild(th);
    }
    const body = table.createTBody();
    for (const s of stats) {
      const row = body.insertRow();
      row.dataset.name = s.name;
      for (const v of [s.name, s.kind, ...keys.map((k) => s.stats[k])]) {
        row.insertCell().textContent = v === undefined ? '' : String(v);
      }
    }
    statsBox.appendChild(table);
  }

  // --- the editor -----------------------------------------------------------

  function editorLines() {
    return editor.value.split('\n');
  }

  function drawGutter(errors, current) {
    const count = editorLines().length;
    gutter.textContent = '';
    for (let n = 1; n <= count; n++) {
      const row = document.createElement('div');
      row.textContent = String(n);
      row.dataset.line = String(n);
      if (errors[n]) {
        row.className = 'pg-gutter-error';
        row.title = errors[n].kind + ': ' + errors[n].message;
      }
      if (n === current) row.classList.add('pg-gutter-current');
      gutter.appendChild(row);
    }
    gutter.scrollTop = editor.scrollTop;
  }

  function selectLine(n) {
    const lines = editorLines();
    let start = 0;
    for (let i = 0; i < n - 1; i++) start += lines[i].length + 1;
    editor.focus();
    editor.setSelectionRange(start, start + (lines[n - 1] || '').length);
  }

  function showErrors(records) {
    const errors = {};
    errorList.textContent = '';
    for (const r of records) {
      if (r.ok) continue;
      errors[r.line] = r.error;
      const item = document.createElement('li');
      item.dataset.line = String(r.line);
      const link = document.createElement('a');
      link.href = '#';
      link.textContent = 'line ' + r.line;
      link.addEventListener('click', (e) => { e.preventDefault(); selectLine(r.line); });
      item.append(link, ' ' + r.error.kind + ': ' + r.error.message);
      errorList.appendChild(item);
    }
    return errors;
  }

  async function show(script, current) {
    const result = await evaluate(script);
    outputBox.textContent = result.jsonl;
    const errors = showErrors(result.records);
    drawGutter(errors, current);
    arenasBox.textContent = '';
    for (const a of result.arenas) {
      if (result.walks[a]) arenasBox.appendChild(drawArena(a, result.walks[a], result.handles[a] || {}));
    }
    drawStats(result.stats);
    return result;
  }

  async function guarded(action) {
    try {
      statusLine.textContent = '';
      statusLine.classList.remove('pg-failed');
      await action();
    } catch (e) {
      statusLine.textContent = e.message;
      statusLine.classList.add('pg-failed');
    }
  }

  async function run() {
    stepAt = 0;
    stepBox.textContent = '';
    delete stepBox.dataset.line;
    keepInUrl();
    const result = await show(editor.value, 0);
    const failed = result.records.filter((r) => !r.ok).length;
    statusLine.textContent = result.records.length + ' commands, ' + failed + ' failed, ' +
      result.arenas.length + ' arenas';
    root.dataset.state = 'ran';
  }

  // Runs the first k lines, where k is the next line after the last step
  // that holds a command, and shows that line's answer.
  async function step() {
    const lines = editorLines();
    const isCommand = (n) => !/^\s*(#.*)?$/.test(lines[n - 1]);
    let k = stepAt + 1;
    while (k <= lines.length && !isCommand(k)) k++;
    if (k > lines.length) {
      // Past the last command: start again from the first.
      k = 1;
      while (k <= lines.length && !isCommand(k)) k++;
      if (k > lines.length) return;
    }
    stepAt = k;
    const result = await show(lines.slice(0, k).join('\n'), k);
    const answer = result.records.find((r) => r.line === k);
    stepBox.dataset.line = String(k);
    stepBox.textContent = 'line ' + k + ': ' + lines[k - 1].replace(/\s+#.*$/, '').trim() +
      '\n' + (answer ? JSON.stringify(answer) : '(no output)');
    selectLine(k);
    root.dataset.state = 'stepped';
  }

  // --- the URL ------------------------------------------------------------

  function toBase64Url(text) {
    let binary = '';
    for (const b of encoder.encode(text)) binary += String.fromCharCode(b);
    return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function fromBase64Url(code) {
    const binary = atob(code.replace(/-/g, '+').replace(/_/g, '/'));
    return decoder.decode(Uint8Array.from(binary, (c) => c.charCodeAt(0)));
  }

  function keepInUrl() {
    history.replaceState(null, '', '#s=' + toBase64Url(editor.value));
  }

  function scriptFromUrl() {
    const m = /^#s=([A-Za-z0-9_-]*)$/.exec(location.hash);
    if (!m) return null;
    try {
      return fromBase64Url(m[1]);
    } catch (_) {
      return null;
    }
  }

  // --- start ----------------------------------------------------------------

  async function loadExample(name) {
    const response = await fetch('scenarios/' + encodeURIComponent(name));
    if (!response.ok) throw new Error(name + ': HTTP ' + response.status);
    editor.value = await response.text();
    stepAt = 0;
    keepInUrl();
    drawGutter({}, 0);
  }

  async function start() {
    const [, index] = await Promise.all([
      loadModule(),
      fetch('scenarios/index.json').then((r) => r.json()),
    ]);
    for (const name of index) {
      const option = document.createElement('option');
      option.value = name;
      option.textContent = name.replace(/\.vmem$/, '');
      picker.appendChild(option);
    }
    const shared = scriptFromUrl();
    if (shared !== null) {
      editor.value = shared;
      picker.value = '';
    } else {
      picker.value = index.includes('vmm-guest-physical.vmem') ? 'vmm-guest-physical.vmem' : index[0];
      await loadExample(picker.value);
    }
    await run();
    picker.addEventListener('change', () => guarded(async () => {
      if (picker.value) {
        await loadExample(picker.value);
        await run();
      }
    }));
    $('pg-run').addEventListener('click', () => guarded(run));
    $('pg-step').addEventListener('click', () => guarded(step));
    editor.addEventListener('input', () => {
      stepAt = 0;
      keepInUrl();
      drawGutter({}, 0);
    });
    editor.addEventListener('scroll', () => { gutter.scrollTop = editor.scrollTop; });
    root.dataset.ready = 'true';
  }

  guarded(start);
})();
