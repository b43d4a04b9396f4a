/**
 * The operator's page of `beetle status --serve`: one self-contained HTML document (inline style and script,
 * no external assets, no framework) that loads /status.json every `refreshSeconds` and redraws. Values are
 * inserted as text nodes only, never as HTML.
 */
export function statusPage(refreshSeconds: number): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Beetle status</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.4em; margin: 0 0 .2em; }
  h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
  table { border-collapse: collapse; margin: .3em 0 1em; }
  th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: left; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  .up { color: #fff; background: #2e7d32; padding: 0 .4em; border-radius: 3px; }
  .down { color: #fff; background: #c62828; padding: 0 .4em; border-radius: 3px; }
  .muted { color: #666; }
  .dead-letter td:first-child { padding-left: 1.6em; }
  #banner { background: #c62828; color: #fff; padding: .4em .8em; display: none; }
</style>
</head>
<body>
<h1>Beetle status</h1>
<div class="muted">updated <span id="updated">never</span>, every ${refreshSeconds}s</div>
<div id="banner" data-testid="banner"></div>
<h2>Brokers</h2>
<div id="brokers" data-testid="brokers"></div>
<h2>Dedup store (Redis)</h2>
<div id="store" data-testid="store"></div>
<h2>Last garbage collection</h2>
<div id="gc" data-testid="gc"></div>
<script>
"use strict";
const REFRESH_MS = ${refreshSeconds * 1000};
function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  for (const c of children || []) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}
function state(up) {
  return el('span', { class: up ? 'up' : 'down' }, [up ? 'up' : 'down']);
}
function num(v) {
  return v === null || v === undefined ? '–' : String(v);
}
function table(headers, rows) {
  return el('table', {}, [el('tr', {}, headers.map((h) => el('th', {}, [h]))), ...rows]);
}
function brokerSection(b) {
  const box = el('div', { 'data-testid': 'broker', 'data-server': b.server, 'data-state': b.reachable ? 'up' : 'down' }, [
    el('h3', {}, [b.server + ' ', state(b.reachable)]),
  ]);
  if (!b.reachable) {
    box.append(el('div', { class: 'muted', 'data-testid': 'broker-error' }, [b.error || 'unreachable']));
    return box;
  }
  const rows = b.queues.map((q) =>
    el('tr', { 'data-testid': 'queue', 'data-queue': q.name, class: q.deadLetterOf ? 'dead-letter' : '' }, [
      el('td', {}, [q.deadLetterOf ? q.name + ' (dead letters of ' + q.deadLetterOf + ')' : q.name]),
      el('td', { class: 'num', 'data-testid': 'messages' }, [q.messages === null ? (q.error || '–') : q.messages]),
      el('td', { class: 'num', 'data-testid': 'consumers' }, [num(q.consumers)]),
    ]),
  );
  box.append(table(['queue', 'messages', 'consumers'], rows));
  box.append(el('div', { class: 'muted' }, ['depths from ' + (b.source || '?')]));
  return box;
}
function storeSection(s) {
  const where = s.master === null ? s.redisServer : s.master;
  const box = el('div', { 'data-state': s.reachable ? 'up' : 'down' }, [
    el('div', {}, ['master ', el('strong', { 'data-testid': 'redis-master' }, [where]), ' db ' + s.db + ' ', state(s.reachable)]),
  ]);
  if (s.master !== null && s.master !== s.redisServer) box.append(el('div', { class: 'muted' }, ['from ' + s.redisServer]));
  if (s.sentinel) {
    box.append(el('div', { 'data-testid': 'sentinel' }, [
      'sentinel ' + s.sentinel.name + ': master ' + num(s.sentinel.master) + ', replicas ' + (s.sentinel.replicas.join(', ') || 'none'),
    ]));
  }
  if (!s.reachable) {
    box.append(el('div', { class: 'muted' }, [s.error || 'unreachable']));
    return box;
  }
  box.append(el('div', {}, ['keys ', el('strong', { 'data-testid': 'redis-keys' }, [num(s.keys)])]));
  if (s.messagesByQueue) {
    const rows = Object.entries(s.messagesByQueue).sort().map(([q, n]) =>
      el('tr', { 'data-testid': 'dedup-queue', 'data-queue': q }, [el('td', {}, [q]), el('td', { class: 'num' }, [n])]),
    );
    box.append(el('div', {}, ['messages ', el('strong', { 'data-testid': 'redis-messages' }, [num(s.messages)]),
      s.scannedAt ? el('span', { class: 'muted' }, [' (scanned ' + new Date(s.scannedAt * 1000).toISOString() + ')']) : '']));
    box.append(table(['queue', 'messages in the store'], rows));
  } else {
    box.append(el('div', { class: 'muted' }, ['message counts: start with --scan']));
  }
  return box;
}
function gcSection(s) {
  if (!s.reachable) return el('div', { class: 'muted' }, ['unknown (store unreachable)']);
  const gc = s.lastGc;
  if (!gc) return el('div', { 'data-testid': 'gc-time' }, ['never']);
  const ago = Math.max(0, Math.round(Date.now() / 1000 - gc.timestamp));
  const parts = [el('div', {}, [el('strong', { 'data-testid': 'gc-time' }, [new Date(gc.timestamp * 1000).toISOString()]), ' (' + ago + 's ago)'])];
  if (gc.messages !== undefined) {
    parts.push(el('div', { 'data-testid': 'gc-counts' }, [
      gc.messages + ' messages scanned, ' + gc.expired + ' expired deleted, ' + gc.orphans + ' orphan keys deleted' +
        (gc.databases ? ' (db ' + gc.databases.join(', ') + ')' : ''),
    ]));
  }
  return el('div', {}, parts);
}
async function refresh() {
  const banner = document.getElementById('banner');
  try {
    const response = await fetch('status.json', { cache: 'no-store' });
    if (!response.ok) throw new Error('status.json answered ' + response.status);
    const report = await response.json();
    document.getElementById('brokers').replaceChildren(...report.brokers.map(brokerSection));
    document.getElementById('store').replaceChildren(storeSection(report.store));
    document.getElementById('gc').replaceChildren(gcSection(report.store));
    document.getElementById('updated').textContent = report.generatedAt;
    document.body.dataset.generatedAt = report.generatedAt;
    banner.style.display = 'none';
  } catch (error) {
    banner.textContent = 'cannot load status: ' + error.message;
    banner.style.display = 'block';
  } finally {
    setTimeout(refresh, REFRESH_MS);
  }
}
refresh();
</script>
</body>
</html>
`;
}
