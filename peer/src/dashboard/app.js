// CloudChain dashboard: polls the node's control API and renders it.
//
// Everything that comes from the network is untrusted: it only ever reaches
// the page through textContent and attribute values set by this script, never
// as markup. No eval, no external resources (the page's CSP forbids both).
'use strict';

(() => {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 5000;
  const TOKEN_KEY = 'cloudchain-token';
  // Rendered in this order each round: the status first, so that "you" is
  // known before the other sections need it.
  const ENDPOINTS = {
    status: '/v1/status',
    offers: '/v1/offers',
    jobs: '/v1/jobs',
    earnings: '/v1/earnings',
    committee: '/v1/committee',
    ledger: '/v1/ledger?tail=15',
  };

  // ---- the control token ----------------------------------------------------

  // The link printed by `cloudchain dashboard` carries the token in the query;
  // keep it for this tab only and take it out of the address bar (and so out
  // of the history and of any screenshot).
  function takeToken() {
    const fromUrl = new URLSearchParams(location.search).get('token');
    if (fromUrl) {
      try { sessionStorage.setItem(TOKEN_KEY, fromUrl); } catch (_) { /* storage off: keep it in memory */ }
      history.replaceState(null, '', location.pathname);
      return fromUrl;
    }
    try { return sessionStorage.getItem(TOKEN_KEY); } catch (_) { return null; }
  }
  const token = takeToken();

  // ---- DOM helpers ----------------------------------------------------------

  const $ = (sel) => document.querySelector(sel);

  // el('td', {class: 'x', title: t}, 'text', node…): strings become text nodes.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null || v === false) continue;
      if (k === 'class') e.className = v;
      else e.setAttribute(k, String(v));
    }
    for (const c of children) {
      if (c == null || c === false) continue;
      e.append(c instanceof Node ? c : String(c));
    }
    return e;
  }

  const SVG_NS = 'http://www.w3.org/2000/svg';
  function svgEl(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    if (text != null) e.textContent = String(text);
    return e;
  }

  function setText(sel, text) { $(sel).textContent = text == null ? '—' : String(text); }

  // Fills a tbody with rows, or hides its table and shows the empty note.
  function fillRows(tbody, rows, emptySel) {
    tbody.replaceChildren(...rows);
    tbody.closest('.scroll').hidden = rows.length === 0;
    $(emptySel).hidden = rows.length !== 0;
  }

  // ---- formatting -----------------------------------------------------------

  const arr = (v) => (Array.isArray(v) ? v : []);
  const pad2 = (n) => String(n).padStart(2, '0');
  const hms = (d) => `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const dateTime = (d) =>
    `${d.getFullYear()}-${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${hms(d)}`;

  // Micro-tokens as the node prints them ("1.500000"), for amounts that come
  // without their `_tokens` string.
  function microToTokens(micro) {
    if (typeof micro !== 'number' || !Number.isFinite(micro)) return '—';
    if (!Number.isInteger(micro)) return (micro / 1e6).toFixed(6);
    const abs = Math.abs(micro);
    const s = `${Math.floor(abs / 1e6)}.${String(abs % 1e6).padStart(6, '0')}`;
    return micro < 0 ? '-' + s : s;
  }

  // An amount field of `obj`: its `<field>_tokens` string, or "—" when unset.
  function amount(obj, field) {
    const s = obj[field + '_tokens'];
    if (typeof s === 'string' && s !== '') return s;
    return obj[field] == null ? '—' : microToTokens(obj[field]);
  }

  function bytes(n) {
    if (typeof n !== 'number') return '—';
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return (i === 0 ? String(n) : n.toFixed(n < 10 ? 2 : 1)) + ' ' + units[i];
  }

  const num = (v, digits) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(digits) : '—');

  function seconds(s) {
    if (typeof s !== 'number' || !Number.isFinite(s)) return '—';
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + ' s';
    if (s < 3600) return `${Math.floor(s / 60)} min ${Math.floor(s % 60)} s`;
    return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  }

  // Who this node is; learnt from /v1/status (or /v1/earnings).
  let ourAccount = null;

  // Accounts show their first 8 hex digits, the whole id on hover.
  function account(id) {
    if (typeof id !== 'string' || id === '') return el('span', { class: 'muted' }, '—');
    const short = el('span', { class: 'id', title: id }, id.slice(0, 8));
    if (id !== ourAccount) return short;
    return el('span', { class: 'acct' }, short, ' ', el('span', { class: 'tag you' }, 'you'));
  }

  // libp2p peer ids all start alike ("12D3KooW…"); their tail tells them apart.
  function peerId(id) {
    if (typeof id !== 'string') return el('span', { class: 'muted' }, '—');
    const short = id.length > 16 ? id.slice(0, 6) + '…' + id.slice(-6) : id;
    return el('span', { class: 'id', title: id }, short);
  }

  function lines(list, cls) {
    const items = arr(list);
    if (items.length === 0) return el('span', { class: 'muted' }, 'none');
    return el('span', { class: 'lines' }, ...items.map((a) => el('span', { class: cls || 'addr' }, a)));
  }

  // ---- sections -------------------------------------------------------------

  function linkKind(p) {
    if (p.direct > 0 && !(p.relayed > 0)) return 'direct';
    if (!(p.direct > 0) && p.relayed > 0) return 'relayed';
    return 'direct+relayed';
  }

  function renderStatus(s) {
    ourAccount = s.account || ourAccount;
    setText('#network', s.network);
    const acct = $('#account');
    acct.textContent = typeof s.account === 'string' ? s.account.slice(0, 8) : '—';
    acct.title = s.account || '';
    $('#roles').replaceChildren(...arr(s.roles).map((r) => el('span', { class: 'tag role' }, r)));
    setText('#peer-count', s.connected_peers);
    $('#balance').textContent = amount(s, 'balance');

    const peers = arr(s.peers).map((p) =>
      el('tr', { 'data-peer': p.peer },
        el('td', { class: 'peer' }, peerId(p.peer)),
        el('td', { class: 'link ' + linkKind(p).replace('+', '-') }, linkKind(p)),
        el('td', { class: 'addrs' }, lines(p.addrs))));
    fillRows($('#peer-rows'), peers, '#peers-empty');

    $('#peer-id').replaceChildren(peerId(s.peer_id));
    $('#listen').replaceChildren(lines(s.listen));
    $('#external').replaceChildren(lines(s.external));
    $('#relays').replaceChildren(arr(s.relays).length
      ? el('span', { class: 'lines' }, ...arr(s.relays).map((r) => peerId(r)))
      : el('span', { class: 'muted' }, 'none'));
    setText('#hole-punches', s.hole_punches);
    setText('#metrics', s.metrics || 'off');

    // Fetches in flight first, then the finished ones.
    const rows = [
      ...arr(s.transfers).map((t) =>
        el('tr', { class: 'pending' },
          el('td', {}, el('span', { class: 'id', title: t.hash }, String(t.hash).slice(0, 8))),
          el('td', {}, peerId(t.from)),
          el('td', { class: 'muted' }, 'in flight'),
          el('td', { class: 'num' }, bytes(t.bytes)),
          el('td', { class: 'num' }, seconds(t.elapsed_s)),
          el('td', { class: 'num' }, ''))),
      ...arr(s.fetched).map((f) =>
        el('tr', { 'data-path': f.path },
          el('td', {}, el('span', { class: 'id', title: f.hash }, String(f.hash).slice(0, 8))),
          el('td', {}, peerId(f.from)),
          el('td', { class: 'path' }, f.path),
          el('td', { class: 'num' }, bytes(f.bytes)),
          el('td', { class: 'num' }, num(f.secs, 2) + ' s'),
          el('td', { class: 'num' }, f.secs > 0 ? bytes(f.bytes / f.secs) + '/s' : '—'))),
    ];
    fillRows($('#fetches'), rows, '#fetches-empty');
  }

  function renderOffers(offers) {
    const rows = arr(offers).map((o) =>
      el('tr', { 'data-provider': o.provider },
        el('td', {}, account(o.provider)),
        el('td', {}, o.class),
        el('td', { class: 'device' }, o.device),
        el('td', { class: 'num' }, num(o.speed_cu_per_s, 2)),
        el('td', { class: 'num' }, microToTokens(o.price_micro_per_cu)),
        el('td', { class: 'num' }, o.free_slots),
        el('td', {}, o.region),
        el('td', { class: 'num' }, seconds(o.expires_in_s))));
    fillRows($('#offer-rows'), rows, '#offers-empty');
  }

  // Whether the user unfolded each job's timeline, kept across re-renders;
  // by default only the newest job's is open.
  const unfolded = new Map();

  function jobClass(j) {
    if (j.done) return j.ok ? 'ok' : 'failed';
    return 'pending';
  }

  function timeline(j, open) {
    const events = arr(j.events);
    const last = events[events.length - 1];
    const details = el('details', { open },
      el('summary', {}, `${events.length} event${events.length === 1 ? '' : 's'}`,
        last ? el('span', { class: 'muted' }, ' · ' + last.what) : null),
      el('ol', { class: 'timeline' }, ...events.map((e) =>
        el('li', {}, el('span', { class: 't' }, `+${num(e.at_s, 1)} s`), ' ' + e.what))));
    if (j.verdict) {
      const v = j.verdict;
      const mark = (b) => (b ? '✓' : '✗');
      details.append(el('p', { class: 'small muted verdict' },
        `verdict: delivered ${mark(v.delivered)} · result ${mark(v.result_ok)} · SLA ${mark(v.sla_ok)}` +
        ` · ${v.violations} violation${v.violations === 1 ? '' : 's'}`));
    }
    if (j.result) details.append(el('p', { class: 'small muted' }, 'result: ', el('span', { class: 'addr' }, j.result)));
    // Only the user's own clicks are remembered (a click on the summary fires
    // before the details toggle, hence the negation).
    details.querySelector('summary').addEventListener('click', () => unfolded.set(j.id, !details.open));
    return details;
  }

  function renderJobs(jobs) {
    let list = arr(jobs).slice();
    // Newest first: by submission time when the node gives it, else the
    // node's order reversed.
    if (list.every((j) => typeof j.submitted_at_ms === 'number')) {
      list.sort((a, b) => b.submitted_at_ms - a.submitted_at_ms);
    } else {
      list.reverse();
    }

    const rows = list.map((j, i) => {
      const open = unfolded.has(j.id) ? unfolded.get(j.id) : i === 0;
      const price = j.price_micro_per_cu == null ? null : `at ${microToTokens(j.price_micro_per_cu)} tokens/CU`;
      return el('tr', { 'data-job': j.id, class: jobClass(j) },
        el('td', { class: 'job' }, el('span', { class: 'id', title: j.id }, String(j.id).slice(0, 8))),
        el('td', { class: 'kind' }, j.kind),
        el('td', { class: 'state' }, el('span', { class: 'tag state-' + jobClass(j) }, j.state),
          // A running training job: the provider's last report.
          j.progress && !j.done
            ? el('div', { class: 'progress muted' },
              `epoch ${j.progress.epoch}/${j.progress.epochs} · loss ${Number(j.progress.loss).toFixed(4)}`)
            : null),
        el('td', { class: 'outcome' }, j.outcome == null ? '—' : j.outcome),
        el('td', { class: 'provider', title: price }, j.provider ? account(j.provider) : '—'),
        el('td', { class: 'num units', title: `estimated ${num(j.estimated_cu, 2)} CU` },
          num(j.units_used, 2)),
        el('td', { class: 'num paid' }, amount(j, 'paid')),
        el('td', { class: 'num refund' }, amount(j, 'refund')),
        el('td', { class: 'num slashed' + (j.slashed > 0 ? ' bad' : '') }, amount(j, 'slashed')),
        el('td', { class: 'events' }, timeline(j, open)));
    });
    fillRows($('#job-rows'), rows, '#jobs-empty');

    // Our open bids: the jobs still looking for a provider.
    const bids = list.filter((j) => j.state === 'matching').map((j) => {
      const last = arr(j.events).slice(-1)[0];
      return el('tr', { 'data-job': j.id },
        el('td', {}, el('span', { class: 'id', title: j.id }, String(j.id).slice(0, 8))),
        el('td', {}, j.kind),
        el('td', { class: 'num' }, num(j.estimated_cu, 2)),
        el('td', { class: 'muted' }, last ? `+${num(last.at_s, 1)} s ${last.what}` : '—'));
    });
    fillRows($('#bids'), bids, '#bids-empty');
  }

  function renderEarnings(e) {
    ourAccount = ourAccount || e.account;
    setText('#earned-paid', amount(e, 'paid'));
    setText('#earned-minted', amount(e, 'minted'));
    setText('#earned-fees', amount(e, 'fees'));
    setText('#earned-slashed', amount(e, 'slashed'));
    setText('#earned-net', amount(e, 'net'));
    const net = $('#earnings-net');
    net.dataset.micro = String(e.net);
    net.classList.toggle('negative', e.net < 0);

    const history = arr(e.history).filter((h) => typeof h.at_ms === 'number' && typeof h.total === 'number');
    const box = $('#earnings-chart');
    if (history.length === 0) {
      box.replaceChildren(el('p', { class: 'empty' }, 'no earnings yet'));
    } else {
      // Drawn at the box's own width so that labels keep their size; the
      // viewBox still lets it follow later resizes.
      box.replaceChildren(chart(history, Math.max(320, box.clientWidth || 640)), legend());
    }
  }

  // ---- the earnings chart ---------------------------------------------------

  const KINDS = ['paid', 'minted', 'fee', 'slashed'];

  // 3 to 5 round ticks (1, 2 or 5 times a power of ten apart) covering [lo, hi].
  function ticks(lo, hi) {
    const base = Math.pow(10, Math.floor(Math.log10((hi - lo) / 4)));
    for (let i = 0; ; i++) {
      const step = base * [1, 2, 5][i % 3] * Math.pow(10, Math.floor(i / 3));
      const first = Math.floor(lo / step);
      const count = Math.ceil(hi / step) - first + 1;
      if (count <= 5) return { values: Array.from({ length: count }, (_, k) => (first + k) * step), step };
    }
  }

  // The cumulative net as a step line over time, one dot per event.
  function chart(history, W) {
    const H = 240, left = 64, right = 14, top = 22, bottom = 30;
    const signed = (h) => (h.kind === 'slashed' ? -1 : 1) * (h.amount || 0);
    // The level before the first point: the history may not start at zero.
    const start = history[0].total - signed(history[0]);

    let t0 = history[0].at_ms;
    let t1 = history[history.length - 1].at_ms;
    if (t1 - t0 < 10000) { t0 -= 5000; t1 += 5000; }
    const padT = (t1 - t0) * 0.04;
    t0 -= padT; t1 += padT;

    const totals = history.map((h) => h.total).concat(start, 0);
    let lo = Math.min(...totals), hi = Math.max(...totals);
    if (hi - lo < 1) hi = lo + 1e6; // flat: show one token of range
    const y = ticks(lo, hi);
    lo = y.values[0]; hi = y.values[y.values.length - 1];

    const sx = (t) => left + ((t - t0) / (t1 - t0)) * (W - left - right);
    const sy = (v) => top + (1 - (v - lo) / (hi - lo)) * (H - top - bottom);

    const svg = svgEl('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'cumulative net earnings over time' });

    // Y axis: gridlines and labels in tokens.
    const decimals = Math.max(0, -Math.floor(Math.log10(y.step / 1e6)));
    for (const v of y.values) {
      svg.append(svgEl('line', { class: v === 0 ? 'zero' : 'grid', x1: left, x2: W - right, y1: sy(v), y2: sy(v) }));
      svg.append(svgEl('text', { class: 'ylabel', x: left - 6, y: sy(v) + 4, 'text-anchor': 'end' },
        (v / 1e6).toFixed(decimals)));
    }
    svg.append(svgEl('text', { class: 'unit', x: left - 6, y: top - 10, 'text-anchor': 'end' }, 'tokens'));

    // X axis: four times spread over the span.
    svg.append(svgEl('line', { class: 'axis', x1: left, x2: W - right, y1: H - bottom, y2: H - bottom }));
    for (let i = 0; i < 4; i++) {
      const t = t0 + padT + ((t1 - t0 - 2 * padT) * i) / 3;
      const x = sx(t);
      svg.append(svgEl('line', { class: 'axis', x1: x, x2: x, y1: H - bottom, y2: H - bottom + 4 }));
      svg.append(svgEl('text', { class: 'xlabel', x, y: H - bottom + 17, 'text-anchor': 'middle' }, hms(new Date(t))));
    }

    let d = `M${sx(t0).toFixed(1)},${sy(start).toFixed(1)}`;
    for (const h of history) d += `H${sx(h.at_ms).toFixed(1)}V${sy(h.total).toFixed(1)}`;
    d += `H${sx(t1).toFixed(1)}`;
    svg.append(svgEl('path', { class: 'total', d }));

    for (const h of history) {
      const kind = KINDS.includes(h.kind) ? h.kind : 'other';
      const dot = svgEl('circle', { 'data-kind': kind, cx: sx(h.at_ms).toFixed(1), cy: sy(h.total).toFixed(1), r: 4.5 });
      const what = `${h.kind} ${h.amount_tokens || microToTokens(h.amount)} tokens at ${hms(new Date(h.at_ms))}` +
        (h.epoch != null ? `, epoch ${h.epoch}` : '') +
        (h.contract ? `, contract ${String(h.contract).slice(0, 8)}` : '') +
        ` → net ${microToTokens(h.total)}`;
      dot.append(svgEl('title', {}, what));
      svg.append(dot);
    }
    return svg;
  }

  function legend() {
    return el('div', { class: 'legend' },
      el('span', {}, el('i', { class: 'swatch line' }), 'cumulative net'),
      ...KINDS.map((k) => el('span', {}, el('i', { class: 'swatch dot', 'data-kind': k }), k)));
  }

  // ---- committee and ledger -------------------------------------------------

  let epochEndsAt = null;

  function tickEpochEnd() {
    if (epochEndsAt == null) return;
    const left = (epochEndsAt - Date.now()) / 1000;
    $('#epoch-ends').textContent = left > 0 ? left.toFixed(1) + ' s' : 'ending…';
  }

  function renderCommittee(c) {
    setText('#epoch', c.epoch);
    setText('#finalized-epoch', c.finalized_epoch);
    // Epochs that have ended without being finalized (the running one has
    // not ended, so it does not count).
    const lag = typeof c.finality_lag === 'number' ? c.finality_lag : null;
    setText('#finality-lag', lag == null ? null : `${lag} epoch${lag === 1 ? '' : 's'}`);
    $('#finality-lag').classList.toggle('warn', lag != null && lag > 2);
    epochEndsAt = typeof c.epoch_ends_at_ms === 'number' ? c.epoch_ends_at_ms : null;
    tickEpochEnd();

    const members = arr(c.committee).map((m) => {
      const li = el('li', { 'data-account': m }, el('span', { class: 'id', title: m }, String(m).slice(0, 8)));
      if (m === c.leader) { li.classList.add('leader'); li.append(el('span', { class: 'tag' }, 'leader')); }
      if (m === ourAccount) {
        li.classList.add('you'); li.append(el('span', { class: 'tag you' }, 'you'));
      }
      return li;
    });
    if (members.length === 0) members.push(el('li', { class: 'muted' }, 'no committee yet'));
    $('#members').replaceChildren(...members);
    const backup = arr(c.backup);
    $('#backup-line').hidden = backup.length === 0;
    $('#backup').replaceChildren(...backup.flatMap((b, i) => (i ? [', ', account(b)] : [account(b)])));

    const rows = arr(c.checkpoints).map((k) =>
      el('tr', { 'data-epoch': k.epoch },
        el('td', { class: 'num' }, k.epoch),
        el('td', { class: 'num' }, k.round),
        el('td', {}, account(k.proposer)),
        el('td', { class: 'num' }, k.signatures),
        el('td', { class: 'num' }, k.authors),
        el('td', { class: 'num' }, amount(k, 'minted')),
        el('td', {}, typeof k.at_ms === 'number' ? hms(new Date(k.at_ms)) : '—')));
    fillRows($('#checkpoints'), rows, '#checkpoints-empty');
  }

  function renderLedger(l) {
    setText('#ledger-entries', l.entries);
    setText('#ledger-invalid', l.invalid);
    $('#ledger-invalid').classList.toggle('bad', l.invalid > 0);
    setText('#total-supply', amount(l, 'total_supply'));
    // The node sends the tail oldest first; show the newest on top.
    const rows = arr(l.tail).slice().reverse().map((e) =>
      el('tr', { 'data-kind': e.kind },
        el('td', { class: 'time' }, typeof e.created_at_ms === 'number' ? dateTime(new Date(e.created_at_ms)) : '—'),
        el('td', {}, account(e.author)),
        el('td', { class: 'num' }, e.seq),
        el('td', {}, e.kind),
        el('td', { class: 'detail', title: `${e.detail}\nentry ${e.hash}` }, el('div', {}, e.detail))));
    fillRows($('#ledger-tail'), rows, '#ledger-empty');
  }

  const RENDER = {
    status: renderStatus,
    offers: renderOffers,
    jobs: renderJobs,
    earnings: renderEarnings,
    committee: renderCommittee,
    ledger: renderLedger,
  };

  // ---- polling --------------------------------------------------------------

  class HttpError extends Error {
    constructor(status, body) {
      super(`HTTP ${status}${body ? ': ' + body : ''}`);
      this.status = status;
    }
  }
  class NetError extends Error {}

  // The body as text: compared with the last one to skip unchanged sections
  // (which keeps selections and hovers alive between polls).
  async function get(path) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), TIMEOUT_MS);
    try {
      let res;
      try {
        res = await fetch(path, {
          headers: token ? { Authorization: 'Bearer ' + token } : {},
          signal: ctl.signal,
          cache: 'no-store',
        });
      } catch (e) {
        throw new NetError(e.name === 'AbortError' ? 'no answer in 5 s' : e.message);
      }
      if (!res.ok) {
        // The node answers errors as {"error": "…"}; anything else is shown raw.
        const body = await res.text().catch(() => '');
        let why = body;
        try { why = JSON.parse(body).error || body; } catch (_) { /* not JSON */ }
        throw new HttpError(res.status, String(why).slice(0, 200));
      }
      return await res.text();
    } finally {
      clearTimeout(timer);
    }
  }

  function banner(parts) {
    const b = $('#banner');
    if (!parts) { b.hidden = true; b.replaceChildren(); return; }
    b.replaceChildren(...parts);
    b.hidden = false;
  }

  function sectionError(name, message) {
    const p = document.querySelector(`[data-error-for="${name}"]`);
    p.textContent = message || '';
    p.hidden = !message;
  }

  const lastBody = {};

  async function poll() {
    const started = Date.now();
    const names = Object.keys(ENDPOINTS);
    const results = await Promise.allSettled(names.map((n) => get(ENDPOINTS[n])));
    const failed = {};
    let refused = false, down = null;

    results.forEach((r, i) => {
      const name = names[i];
      if (r.status === 'rejected') {
        const err = r.reason;
        if (err instanceof HttpError && err.status === 401) refused = true;
        if (err instanceof NetError) down = err.message;
        failed[name] = `could not load ${ENDPOINTS[name]}: ${err.message}`;
        return;
      }
      if (r.value === lastBody[name]) return;
      try {
        RENDER[name](JSON.parse(r.value));
        lastBody[name] = r.value;
      } catch (e) {
        console.error(`rendering ${name}:`, e);
        failed[name] = `could not show ${ENDPOINTS[name]}: ${e.message}`;
      }
    });
    const allOk = Object.keys(failed).length === 0;
    const anyOk = results.some((r) => r.status === 'fulfilled');

    // A refused token or a silent node concerns the whole page: one banner
    // instead of an error in every section. Sections keep their last data.
    const whole = refused || (down != null && !anyOk);
    for (const name of names) sectionError(name, whole ? null : failed[name]);
    if (refused) {
      banner(token
        ? ['The control token was refused: open the link printed by ', el('code', {}, 'cloudchain dashboard'), '.']
        : ['No control token: open the link printed by ', el('code', {}, 'cloudchain dashboard'), '.']);
    } else if (whole) {
      banner([`The node does not answer (${down}); retrying every ${POLL_MS / 1000} s.`]);
    } else {
      banner(null);
    }
    document.body.classList.toggle('stale', !anyOk);

    if (allOk && !document.body.dataset.loaded) document.body.dataset.loaded = '1';
    const now = Date.now();
    document.body.dataset.updated = String(now);
    if (anyOk) $('#updated').textContent = 'updated ' + hms(new Date(now));

    setTimeout(poll, Math.max(0, POLL_MS - (now - started)));
  }

  setInterval(tickEpochEnd, 500);
  poll();
})();
