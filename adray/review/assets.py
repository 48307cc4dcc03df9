"""The review page's style sheet and script (inline in the page: it opens from a file, offline)."""

CSS = """
body{font:14px/1.4 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#222;background:#f6f6f6}
header{position:sticky;top:0;z-index:2;background:#fff;border-bottom:1px solid #ddd;padding:8px 16px}
h1{font-size:18px;margin:0 0 4px}.muted{color:#777}.note{color:#555;font-size:12px;margin:2px 0}
.bar{display:flex;flex-wrap:wrap;gap:10px;align-items:center}button{font:inherit;padding:3px 10px;cursor:pointer}
kbd{border:1px solid #bbb;border-radius:3px;padding:0 4px;background:#fafafa;font-size:12px}
main{display:flex;flex-wrap:wrap;gap:12px;padding:12px 16px}
.card{background:#fff;border:3px solid #ddd;border-radius:6px;padding:8px;font-size:12px;width:max-content}
.card.focus{outline:3px solid #1e63d6;outline-offset:2px}.card.anomalous{border-color:#c62828}
.card.normal{border-color:#1a7f37}.pics{display:flex;gap:6px}.pic{position:relative;line-height:0}
.pic svg{position:absolute;left:0;top:0}.pic svg rect{fill:none;stroke:#00e5ff;stroke-width:2}
.badge{display:inline-block;padding:0 6px;border-radius:8px;color:#fff;font-weight:600}
.b-anomalous{background:#c62828}.b-normal{background:#1a7f37}.b-none{background:#999}
.b-sample{background:#7b4fc4}.b-top{background:#555}.row{margin-top:4px}.acts{display:flex;gap:6px;margin-top:6px}
.acts input{width:120px}.id{font-family:ui-monospace,monospace;color:#666}
"""

JS = r"""
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('review-data').textContent);
  const meta = data.meta, cards = data.cards, COLUMNS = meta.columns;
  const store = 'adray-review:' + meta.page_id;
  let labels = {};
  try { labels = JSON.parse(localStorage.getItem(store) || '{}'); } catch (e) { labels = {}; }
  let view = cards.map((c, i) => i), page = 0, focus = 0, dirty = false;
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const pages = () => Math.max(1, Math.ceil(view.length / meta.page_size));
  const fmt = (v) => (v === null || v === undefined) ? 'n/a' : Number(v).toPrecision(4);

  function save() {
    dirty = true;
    try { localStorage.setItem(store, JSON.stringify(labels)); } catch (e) { /* private mode: memory only */ }
    $('count').textContent = Object.keys(labels).length;
  }
  function mark(card, label, defect) {
    const at = new Date().toISOString();
    labels[card.id] = {label: label, defect_type: label === 'anomalous' ? (defect || '') : '', at: at,
                       uri: card.uri};
    save(); render();
  }
  function clear(card) { delete labels[card.id]; save(); render(); }

  function picture(src, c, boxes) {
    const wrap = el('div', 'pic');
    const img = el('img');
    img.src = src; img.width = c.tw; img.height = c.th; img.alt = c.id;
    wrap.appendChild(img);
    if (boxes && c.regions && c.regions.length) {
      const ns = 'http://www.w3.org/2000/svg', svg = document.createElementNS(ns, 'svg');
      svg.setAttribute('width', c.tw); svg.setAttribute('height', c.th);
      const sx = c.tw / c.w, sy = c.th / c.h;
      for (const r of c.regions) {
        const rect = document.createElementNS(ns, 'rect');
        rect.setAttribute('x', r[0] * sx); rect.setAttribute('y', r[1] * sy);
        rect.setAttribute('width', Math.max(1, (r[2] - r[0]) * sx));
        rect.setAttribute('height', Math.max(1, (r[3] - r[1]) * sy));
        const t = document.createElementNS(ns, 'title');
        t.textContent = 'area ' + r[4] + ' px, peak ' + fmt(r[5]) + ', mean ' + fmt(r[6]);
        rect.appendChild(t); svg.appendChild(rect);
      }
      wrap.appendChild(svg);
    }
    return wrap;
  }

  function cardNode(c, pos) {
    const lab = labels[c.id];
    const node = el('div', 'card' + (lab ? ' ' + lab.label : '') + (pos === focus ? ' focus' : ''));
    node.dataset.item = c.id; node.dataset.pos = pos;
    const pics = el('div', 'pics');
    if (c.img) pics.appendChild(picture(c.img, c, false)); else pics.appendChild(el('div', 'muted', c.error));
    if (c.ovl) pics.appendChild(picture(c.ovl, c, true));
    node.appendChild(pics);
    const head = el('div', 'row');
    head.appendChild(el('b', '', c.category + ' · ' + c.detector + ' '));
    head.appendChild(el('span', 'badge b-' + c.kind, c.kind === 'top' ? 'top #' + c.rank : 'low-score sample'));
    node.appendChild(head);
    const dec = c.decision ? c.decision : 'n/a';
    node.appendChild(el('div', 'row', 'score ' + fmt(c.score) + ' · threshold ' + fmt(c.threshold) +
      ' · decision ' + dec + (c.source ? ' (' + c.source + ')' : '') +
      (c.regions ? ' · ' + (c.region_count > c.regions.length ? c.region_count + ' regions, largest ' +
        c.regions.length + ' boxed' : c.regions.length + ' region(s)') : '')));
    node.appendChild(el('div', 'row id', c.id + (c.type ? ' · manifest: ' + c.type : '')));
    const state = el('div', 'row');
    state.appendChild(el('span', 'badge b-' + (lab ? lab.label : 'none'),
      lab ? lab.label + (lab.defect_type ? ': ' + lab.defect_type : '') : 'not labelled'));
    node.appendChild(state);
    const acts = el('div', 'acts');
    const nb = el('button', 'mark-normal', 'Normal (n)'), ab = el('button', 'mark-anomalous', 'Anomalous (a)');
    const dt = el('input', 'defect'); dt.setAttribute('list', 'defect-types'); dt.placeholder = 'defect type';
    if (lab && lab.defect_type) dt.value = lab.defect_type;
    nb.onclick = () => { focus = pos; mark(c, 'normal'); };
    ab.onclick = () => { focus = pos; mark(c, 'anomalous', dt.value.trim()); };
    dt.onchange = () => { if (labels[c.id] && labels[c.id].label === 'anomalous') mark(c, 'anomalous', dt.value.trim()); };
    acts.append(nb, ab, dt);
    node.appendChild(acts);
    node.onclick = (ev) => { if (ev.target === node || ev.target.tagName === 'IMG') { focus = pos; render(); } };
    return node;
  }

  function render() {
    page = Math.min(Math.max(0, Math.floor(focus / meta.page_size)), pages() - 1);
    const main = $('cards'); main.textContent = '';
    const start = page * meta.page_size, end = Math.min(view.length, start + meta.page_size);
    for (let p = start; p < end; p++) main.appendChild(cardNode(cards[view[p]], p));
    $('page').textContent = 'page ' + (page + 1) + ' of ' + pages() + ' · ' + view.length + ' item(s)';
    $('count').textContent = Object.keys(labels).length;
    const f = main.querySelector('.card.focus');
    if (f && f.scrollIntoView) f.scrollIntoView({block: 'nearest'});
  }
  function move(d) { focus = Math.min(Math.max(0, focus + d), Math.max(0, view.length - 1)); render(); }
  function turn(d) { focus = Math.min(Math.max(0, (page + d) * meta.page_size), Math.max(0, view.length - 1)); render(); }
  function current() { return view.length ? cards[view[focus]] : null; }

  function quote(v) {
    v = (v === null || v === undefined) ? '' : String(v);
    return /[",\r\n]/.test(v) ? '"' + v.replace(/"/g, '""') + '"' : v;
  }
  function csv() {
    const who = $('reviewer').value.trim();
    const lines = [COLUMNS.join(',')];
    for (const id of Object.keys(labels).sort()) {
      const l = labels[id];
      const row = {item_id: id, uri: l.uri, label: l.label, defect_type: l.defect_type, mask_uri: '',
                   labelled_by: who, labelled_at: l.at};
      lines.push(COLUMNS.map((k) => quote(row[k])).join(','));
    }
    return lines.join('\r\n') + '\r\n';
  }
  function exportCsv() {
    const blob = new Blob([csv()], {type: 'text/csv'});
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'review-labels-' + new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, 'Z') + '.csv';
    document.body.appendChild(a); a.click(); a.remove();
    dirty = false;
  }

  function onKey(ev) {
    if (ev.target && (ev.target.tagName === 'INPUT' || ev.target.tagName === 'SELECT')) {
      if (ev.key === 'Escape') ev.target.blur();
      return;
    }
    if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const c = current(), k = ev.key;
    if (k === 'j' || k === 'ArrowRight' || k === 'ArrowDown') move(1);
    else if (k === 'k' || k === 'ArrowLeft' || k === 'ArrowUp') move(-1);
    else if (k === ']' || k === 'PageDown') turn(1);
    else if (k === '[' || k === 'PageUp') turn(-1);
    else if (c && k === 'n') { mark(c, 'normal'); move(1); }
    else if (c && k === 'a') {
      const input = document.querySelector('.card.focus input.defect');
      mark(c, 'anomalous', input ? input.value.trim() : ''); move(1);
    } else if (c && /^[1-9]$/.test(k) && meta.defect_types[Number(k) - 1] !== undefined) {
      mark(c, 'anomalous', meta.defect_types[Number(k) - 1]); move(1);
    } else if (c && (k === 'x' || k === 'Backspace')) clear(c);
    else return;
    ev.preventDefault();
  }

  function setup() {
    const sel = $('category');
    for (const cat of meta.categories) { const o = el('option', '', cat); o.value = cat; sel.appendChild(o); }
    sel.onchange = () => {
      view = cards.map((c, i) => i).filter((i) => !sel.value || cards[i].category === sel.value);
      focus = 0; render(); sel.blur();
    };
    const dl = $('defect-types');
    meta.defect_types.forEach((t, i) => { const o = el('option'); o.value = t; dl.appendChild(o);
      const s = el('span', '', ' '); s.appendChild(el('kbd', '', String(i + 1))); s.append(' ' + t);
      if (i < 9) $('digits').appendChild(s); });
    $('reviewer').value = localStorage.getItem('adray-review:reviewer') || meta.reviewer || '';
    $('reviewer').onchange = () => { try { localStorage.setItem('adray-review:reviewer', $('reviewer').value); } catch (e) {} };
    $('export').onclick = exportCsv;
    $('prev').onclick = () => turn(-1);
    $('next').onclick = () => turn(1);
    document.addEventListener('keydown', onKey);
    window.addEventListener('beforeunload', (ev) => { if (dirty) { ev.preventDefault(); ev.returnValue = ''; } });
    window.adrayReview = {csv: csv, labels: () => labels, focus: () => (current() || {}).id, page: () => page};
    render();
  }
  setup();
})();
"""
