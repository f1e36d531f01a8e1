// stevedore's web page: plain JavaScript on the server's JSON API, with
// the session cookie the server set at sign-in. No build step, no
// dependencies; every element is made with the DOM, never from HTML
// strings, so nothing a step prints can become markup.
'use strict';

(() => {
  const main = document.getElementById('main');
  const announceEl = document.getElementById('announce');
  let session = null; // {name, role, key_id, csrf_token}
  let view = null; // the current view's AbortController

  // ---- helpers ----

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k === 'text') el.textContent = v;
      else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? '' : v);
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      el.append(c instanceof Node ? c : String(c));
    }
    return el;
  }

  function announce(msg) {
    announceEl.textContent = '';
    setTimeout(() => { announceEl.textContent = msg; }, 50);
  }

  class HTTPError extends Error {
    constructor(status, msg) { super(msg); this.status = status; }
  }

  // api calls the JSON API; state-changing calls carry the CSRF token.
  async function api(method, path, body, signal) {
    const opts = { method, headers: {}, credentials: 'same-origin', signal };
    if (method !== 'GET' && session) opts.headers['X-CSRF-Token'] = session.csrf_token || '';
    if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(path, opts);
    if (r.status === 401 && path !== '/web/login') {
      session = null;
      go('/login?next=' + encodeURIComponent(location.pathname + location.search + location.hash), true);
      throw new HTTPError(401, 'signed out');
    }
    if (!r.ok) {
      let msg = r.status + ' ' + r.statusText;
      try { msg = (await r.json()).error || msg; } catch (_) { /* not JSON */ }
      throw new HTTPError(r.status, msg);
    }
    if (r.status === 204) return { data: null, headers: r.headers };
    return { data: await r.json(), headers: r.headers };
  }

  const sleep = (ms, signal) => new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal && signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
  });

  // every runs fn now and then every ms while the view lives; a hidden
  // tab asks nothing.
  async function every(ms, signal, fn) {
    while (!signal.aborted) {
      if (!document.hidden) {
        try { await fn(); } catch (e) { if (e.status === 401 || signal.aborted) return; }
      }
      await sleep(ms, signal);
    }
  }

  function ago(t) {
    if (!t) return '';
    const s = Math.max(0, (Date.now() - Date.parse(t)) / 1000);
    if (s < 60) return Math.floor(s) + 's ago';
    if (s < 3600) return Math.floor(s / 60) + 'm ago';
    if (s < 86400) return Math.floor(s / 3600) + 'h ago';
    return Math.floor(s / 86400) + 'd ago';
  }

  function duration(from, to) {
    if (!from) return '';
    const s = Math.max(0, ((to ? Date.parse(to) : Date.now()) - Date.parse(from)) / 1000);
    if (s < 60) return s.toFixed(s < 10 ? 1 : 0) + 's';
    if (s < 3600) return Math.floor(s / 60) + 'm ' + Math.floor(s % 60) + 's';
    return Math.floor(s / 3600) + 'h ' + Math.floor((s % 3600) / 60) + 'm';
  }

  const fmtTime = (t) => t ? new Date(t).toLocaleString() : '';
  const num = (n) => n.toLocaleString('en');

  function badge(text, kind) {
    return h('span', { class: 'badge badge-' + (kind || text || '').toLowerCase() }, text || '');
  }

  function stepBadge(s) {
    return s.state === 'complete' ? badge(s.outcome, s.outcome) : badge(s.state, s.state);
  }

  function mayCancel(s) {
    if (!session || s.state === 'complete') return false;
    if (session.role === 'admin') return true;
    return session.role === 'submitter' && !!session.key_id && s.submitter_key === session.key_id;
  }

  function errorBox(e) {
    return h('p', { class: 'error', role: 'alert' }, e.message || String(e));
  }

  // ---- routing ----

  function go(path, replace) {
    if (replace) history.replaceState(null, '', path);
    else history.pushState(null, '', path);
    route();
  }

  document.addEventListener('click', (ev) => {
    const a = ev.target.closest('a[href]');
    if (!a || a.hasAttribute('download') || a.target || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.altKey || ev.button !== 0) return;
    const u = new URL(a.href, location.href);
    if (u.origin !== location.origin || u.pathname.startsWith('/api/')) return;
    if (u.pathname === location.pathname && u.search === location.search && u.hash) return; // in-page
    ev.preventDefault();
    go(u.pathname + u.search + u.hash);
  });
  window.addEventListener('popstate', route);

  async function route() {
    if (view) view.abort();
    view = new AbortController();
    const signal = view.signal;
    const path = location.pathname;
    if (!session && path !== '/login') {
      try {
        session = (await api('GET', '/web/session')).data;
      } catch (e) {
        return; // api went to /login
      }
    }
    document.getElementById('top').hidden = !session;
    if (session) {
      const who = document.getElementById('who');
      who.textContent = session.name + ' (' + session.role + ')';
      // The admin's email (ADMIN_EMAIL) on hover: the line stays short.
      who.title = session.email || '';
    }
    for (const a of document.querySelectorAll('[data-nav]')) {
      if (path.startsWith('/' + a.dataset.nav)) a.setAttribute('aria-current', 'page');
      else a.removeAttribute('aria-current');
    }
    main.replaceChildren();
    let m;
    if (path === '/login') loginView(signal);
    else if (path === '/workers') workersView(signal);
    else if ((m = path.match(/^\/steps\/([^/]+)$/))) stepView(decodeURIComponent(m[1]), signal);
    else stepsView(signal);
  }

  document.getElementById('signout').addEventListener('click', async () => {
    try { await api('POST', '/web/logout'); } catch (e) { if (e.status !== 401) { alert(e.message); return; } }
    session = null;
    announce('Signed out');
    go('/login', true);
  });

  // ---- sign-in ----

  function loginView() {
    document.title = 'Sign in · stevedore';
    const next = new URLSearchParams(location.search).get('next');
    const err = h('div', { id: 'login-error', 'aria-live': 'assertive' });
    async function signIn(body, form) {
      err.replaceChildren();
      form.querySelector('button').disabled = true;
      try {
        session = (await api('POST', '/web/login', body)).data;
        announce('Signed in as ' + session.name);
        go(next && next.startsWith('/') && !next.startsWith('//') ? next : '/steps', true);
      } catch (e) {
        err.replaceChildren(errorBox(e));
        form.querySelector('button').disabled = false;
      }
    }
    const pw = h('form', { class: 'card', id: 'login-password', onsubmit: (ev) => {
      ev.preventDefault();
      signIn({ username: pw.elements.username.value, password: pw.elements.password.value }, pw);
    } },
      h('h2', { text: 'Admin' }),
      h('label', { for: 'username' }, 'Username'),
      h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true, value: 'admin' }),
      h('label', { for: 'password' }, 'Password'),
      h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true }),
      h('button', { type: 'submit', class: 'primary' }, 'Sign in'));
    const key = h('form', { class: 'card', id: 'login-key', onsubmit: (ev) => {
      ev.preventDefault();
      signIn({ key: key.elements.key.value }, key);
    } },
      h('h2', { text: 'API key' }),
      h('label', { for: 'apikey' }, 'Key (sdk_…)'),
      h('input', { id: 'apikey', name: 'key', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false' }),
      h('button', { type: 'submit', class: 'primary' }, 'Sign in with the key'));
    main.append(h('div', { class: 'login' },
      h('h1', { text: 'Sign in to stevedore' }), err, h('div', { class: 'login-forms' }, pw, key)));
    pw.elements.password.focus();
  }

  // ---- steps ----

  const PAGE = 50;

  function stepsView(signal) {
    document.title = 'Steps · stevedore';
    const q = new URLSearchParams(location.search);
    const state = q.get('state') || '';
    const page = Math.max(1, parseInt(q.get('page') || '1', 10) || 1);
    const select = h('select', { id: 'state-filter', onchange: () => {
      const p = new URLSearchParams();
      if (select.value) p.set('state', select.value);
      go('/steps' + (p.toString() ? '?' + p : ''));
    } }, ...[['', 'All'], ['queued', 'Queued'], ['running', 'Running'], ['complete', 'Complete']].map(([v, t]) =>
      h('option', { value: v, selected: v === state }, t)));
    const body = h('tbody');
    const info = h('p', { class: 'pager-info', 'aria-live': 'polite' });
    const pager = h('nav', { class: 'pager', 'aria-label': 'Pages' });
    const errEl = h('div');
    main.append(
      h('div', { class: 'title-row' }, h('h1', { text: 'Steps' }),
        h('div', { class: 'filter' }, h('label', { for: 'state-filter' }, 'State '), select)),
      errEl,
      h('div', { class: 'table-wrap' }, h('table', { class: 'steps rtable' },
        h('caption', { class: 'sr-only' }, 'Steps, newest first'),
        h('thead', {}, h('tr', {}, ...['Step', 'State', 'Exit', 'Worker', 'Pool', 'Image', 'Submitted by', 'Age', 'Duration'].map((c) =>
          h('th', { scope: 'col' }, c)))),
        body)),
      h('div', { class: 'pager-row' }, info, pager));
    const link = (p) => {
      const u = new URLSearchParams();
      if (state) u.set('state', state);
      if (p > 1) u.set('page', p);
      return '/steps' + (u.toString() ? '?' + u : '');
    };
    every(3000, signal, async () => {
      let r;
      try {
        r = await api('GET', '/api/steps?limit=' + PAGE + '&offset=' + (page - 1) * PAGE + (state ? '&state=' + state : ''), undefined, signal);
        errEl.replaceChildren();
      } catch (e) {
        if (e.status !== 401 && !signal.aborted) errEl.replaceChildren(errorBox(e));
        throw e;
      }
      const total = parseInt(r.headers.get('X-Total-Count') || '0', 10);
      const pages = Math.max(1, Math.ceil(total / PAGE));
      body.replaceChildren(...r.data.map((s) => h('tr', {},
        h('td', { 'data-label': 'Step' }, h('a', { href: '/steps/' + encodeURIComponent(s.id), class: 'mono' }, s.id)),
        h('td', { 'data-label': 'State' }, stepBadge(s)),
        h('td', { 'data-label': 'Exit' }, s.exit_code ?? ''),
        h('td', { 'data-label': 'Worker' }, s.assigned || s.worker || ''),
        h('td', { 'data-label': 'Pool' }, s.pool || ''),
        h('td', { 'data-label': 'Image', class: 'mono' }, s.image || 'host'),
        h('td', { 'data-label': 'Submitted by' }, s.submitted_by || ''),
        h('td', { 'data-label': 'Age' }, h('time', { datetime: s.created_at, title: fmtTime(s.created_at) }, ago(s.created_at))),
        h('td', { 'data-label': 'Duration' }, duration(s.started_at, s.finished_at)))));
      if (!r.data.length) body.append(h('tr', {}, h('td', { colspan: 9, class: 'empty' }, total ? 'No steps on this page.' : 'No steps yet.')));
      info.textContent = total ? `Page ${page} of ${pages} · ${num(total)} steps` : '';
      pager.replaceChildren(
        page > 1 ? h('a', { href: link(page - 1), rel: 'prev' }, '← Newer') : h('span', { class: 'disabled' }, '← Newer'),
        page < pages ? h('a', { href: link(page + 1), rel: 'next' }, 'Older →') : h('span', { class: 'disabled' }, 'Older →'));
    });
  }

  // ---- one step ----

  function stepView(id, signal) {
    document.title = id + ' · stevedore';
    const head = h('div', { class: 'step-head' });
    const details = h('dl', { class: 'details' });
    const outputs = h('section', { class: 'outputs', 'aria-labelledby': 'outputs-h' });
    const errEl = h('div');
    const dialog = h('dialog', { id: 'cancel-dialog', 'aria-labelledby': 'cancel-h' },
      h('form', { method: 'dialog' },
        h('h2', { id: 'cancel-h' }, 'Cancel this step?'),
        h('p', {}, 'Its processes get TERM, then KILL after the grace period. This cannot be undone.'),
        h('div', { class: 'buttons' },
          h('button', { value: 'keep', class: 'secondary', autofocus: true }, 'Keep it running'),
          h('button', { value: 'cancel', class: 'danger', id: 'cancel-confirm' }, 'Cancel the step'))));
    dialog.addEventListener('close', async () => {
      if (dialog.returnValue !== 'cancel') return;
      try {
        await api('POST', '/api/steps/' + encodeURIComponent(id) + '/cancel', undefined, signal);
        announce('Cancel requested');
      } catch (e) {
        errEl.replaceChildren(errorBox(e));
      }
    });
    const cancelBtn = h('button', { type: 'button', class: 'danger', id: 'cancel', hidden: true, onclick: () => dialog.showModal() }, 'Cancel step…');
    const logSection = h('section', { class: 'log-section', 'aria-labelledby': 'log-h' });
    main.append(
      h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' }, h('a', { href: '/steps' }, 'Steps'), ' / ', h('span', { class: 'mono' }, id)),
      head, errEl, details, outputs, logSection, dialog);
    const badgeBox = h('span', { class: 'badges' });
    head.append(h('h1', { class: 'mono' }, id), badgeBox, cancelBtn);
    let lastBadges = '';
    let lastState = '';
    let lastOutputs = '';

    function show(s) {
      // Only what changed is replaced: a button replaced under a pointer
      // (or a screen reader's focus) would lose the click.
      const badges = [s.state, s.outcome, s.cancel_requested].join();
      if (badges !== lastBadges) {
        lastBadges = badges;
        badgeBox.replaceChildren(...[stepBadge(s), s.cancel_requested && s.state !== 'complete' ? badge('cancelling', 'cancelling') : null].filter(Boolean));
      }
      cancelBtn.hidden = !mayCancel(s);
      const rows = [
        ['State', s.state], ['Outcome', s.outcome], ['Exit code', s.exit_code ?? ''], ['Signal', s.signal],
        ['Reason', s.reason], ['Ended in', s.ended_in], ['Waiting for', s.waiting_for],
        ['Worker', s.assigned || s.worker], ['Pool', s.pool],
        ['Labels', s.labels ? Object.entries(s.labels).map(([k, v]) => k + '=' + v).join(', ') : ''],
        ['Image', s.image || 'host'], ['Submitted by', s.submitted_by],
        ['Submitted', fmtTime(s.created_at)], ['Started', fmtTime(s.started_at)], ['Finished', fmtTime(s.finished_at)],
        ['Duration', duration(s.started_at, s.finished_at)],
      ];
      const wide = new Set(['Reason', 'Waiting for']);
      details.replaceChildren(...rows.filter(([, v]) => v !== undefined && v !== null && v !== '').map(([k, v]) =>
        h('div', { class: wide.has(k) ? 'wide' : null }, h('dt', {}, k), h('dd', { 'data-field': k.toLowerCase().replace(/ /g, '-') }, String(v)))));
      const key = JSON.stringify([s.output_variables, s.artifacts, s.state === 'complete']);
      if (key !== lastOutputs) {
        lastOutputs = key;
        const vars = Object.entries(s.output_variables || {}).sort();
        const sensitive = new Set(s.sensitive_outputs || []);
        if (!vars.length && !(s.artifacts || []).length) {
          outputs.replaceChildren(h('h2', { id: 'outputs-h', class: 'sr-only' }, 'Output variables and artifacts'),
            h('p', { class: 'muted' }, s.state === 'complete' ? 'No output variables, no artifacts.' : 'No output variables or artifacts yet.'));
          return finish();
        }
        outputs.replaceChildren(
          h('h2', { id: 'outputs-h' }, 'Output variables and artifacts'),
          vars.length ? h('table', { class: 'vars' },
            h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Variable'), h('th', { scope: 'col' }, 'Value'))),
            h('tbody', {}, ...vars.map(([k, v]) => h('tr', {}, h('th', { scope: 'row', class: 'mono' }, k),
              h('td', { class: 'mono' }, sensitive.has(k) ? h('span', { title: 'sensitive' }, '********') : v))))) : h('p', { class: 'muted' }, 'No output variables.'),
          (s.artifacts || []).length ? h('ul', { class: 'artifacts' }, ...s.artifacts.map((a) => h('li', {},
            h('a', { href: '/api/steps/' + encodeURIComponent(s.id) + '/artifacts/' + encodeURIComponent(a.name), download: a.name }, a.name),
            ' ', h('span', { class: 'muted' }, num(a.size_bytes) + ' bytes')))) : h('p', { class: 'muted' }, 'No artifacts.'));
      }
      finish();
      function finish() {
        if (lastState && lastState !== 'complete' && s.state === 'complete') announce('Step ended: ' + s.outcome);
        lastState = s.state;
      }
    }

    api('GET', '/api/steps/' + encodeURIComponent(id), undefined, signal).then(({ data }) => {
      show(data);
      const lv = new LogView(id, logSection, signal, show);
      lv.start(data);
    }).catch((e) => { if (e.status !== 401 && !signal.aborted) errEl.replaceChildren(errorBox(e)); });
  }

  // ---- the log ----

  // LogView shows a task log of any length: only the rows in sight are in
  // the document (fixed-height rows over a spacer), the tail is fetched
  // first and earlier lines as they come into sight, and new lines are
  // long-polled.
  const TAIL = 1000;
  const CHUNK = 5000;
  const OVERSCAN = 20;

  class LogView {
    constructor(id, section, signal, onStep) {
      this.id = id;
      this.signal = signal;
      this.onStep = onStep;
      this.lines = []; // by sequence
      this.hi = 0; // the highest sequence known to exist
      this.rows = []; // the sequences shown, in order
      this.loaded = 0; // how many lines are fetched
      this.loading = new Set();
      this.showVerbose = false;
      this.matches = [];
      this.match = -1;
      this.query = '';
      this.target = 0; // the line of #L…
      this.rowH = 20;
      const base = '/api/steps/' + encodeURIComponent(id) + '/log';
      this.base = base;

      this.verbose = h('input', { type: 'checkbox', id: 'show-verbose' });
      this.verbose.addEventListener('change', () => { this.showVerbose = this.verbose.checked; this.rebuild(true); this.search(); });
      this.searchIn = h('input', { type: 'search', id: 'log-search', placeholder: 'Search the log', 'aria-label': 'Search the log' });
      this.searchIn.addEventListener('keydown', (ev) => {
        if (ev.key === 'Enter') { ev.preventDefault(); this.query === this.searchIn.value ? this.next(ev.shiftKey ? -1 : 1) : this.search(); }
      });
      this.searchInfo = h('span', { class: 'search-info', 'aria-live': 'polite', id: 'search-info' });
      this.countEl = h('span', { class: 'muted', id: 'log-count' });
      this.loadAllBtn = h('button', { type: 'button', class: 'secondary', id: 'load-all', onclick: () => this.loadAll() }, 'Load the whole log');
      this.viewport = h('div', { class: 'log', id: 'log', tabindex: '0', role: 'region', 'aria-label': 'Task log' });
      this.spacer = h('div', { class: 'log-spacer' });
      this.win = h('div', { class: 'log-window', role: 'list' });
      this.spacer.append(this.win);
      this.viewport.append(this.spacer);
      this.viewport.addEventListener('scroll', () => this.schedule(), { passive: true });
      window.addEventListener('resize', () => this.schedule(), { signal });
      window.addEventListener('hashchange', () => this.fromHash(), { signal });
      section.append(
        h('div', { class: 'log-head' }, h('h2', { id: 'log-head' }, h('span', { id: 'log-h' }, 'Log'), ' ', this.countEl),
          h('div', { class: 'log-tools' },
            h('label', { class: 'check' }, this.verbose, ' Verbose lines'),
            h('span', { class: 'search' }, this.searchIn,
              h('button', { type: 'button', class: 'secondary', 'aria-label': 'Previous match', onclick: () => this.next(-1) }, '↑'),
              h('button', { type: 'button', class: 'secondary', 'aria-label': 'Next match', onclick: () => this.next(1) }, '↓'),
              this.searchInfo),
            this.loadAllBtn,
            h('a', { class: 'button secondary', href: base + '?format=text', download: id + '.log', id: 'download-log' }, 'Download'))),
        this.viewport);
    }

    async start(step) {
      const m = location.hash.match(/^#L(\d+)$/);
      this.target = m ? parseInt(m[1], 10) : 0;
      this.hi = step.cursor || 0;
      this.rowH = this.measure();
      let after = Math.max(0, this.hi - TAIL);
      if (this.target && this.target <= after) await this.fetch(this.chunkOf(this.target) * CHUNK, CHUNK);
      await this.fetch(after, TAIL + 1);
      this.rebuild(false);
      if (this.target) this.scrollToLine(this.target); else this.toBottom();
      this.follow(step);
    }

    measure() {
      const probe = h('div', { class: 'ln' }, h('span', { class: 'tx' }, 'x'));
      this.win.append(probe);
      const hgt = probe.getBoundingClientRect().height || 20;
      probe.remove();
      return hgt;
    }

    // fetch gets up to max lines after sequence after into this.lines.
    async fetch(after, max) {
      const r = await api('GET', `${this.base}?after=${after}&max=${max}`, undefined, this.signal);
      this.take(r.data.lines);
      this.onStep(r.data.step);
      return r.data;
    }

    take(lines) {
      for (const l of lines) {
        this.lines[l.seq] = l;
        if (l.seq > this.hi) this.hi = l.seq;
      }
    }

    async follow(step) {
      let s = step;
      while (!this.signal.aborted) {
        if (s.state === 'complete' && this.hi >= (s.cursor || 0)) {
          const r = await api('GET', `${this.base}?after=${this.hi}&max=${CHUNK}`, undefined, this.signal).catch(() => null);
          if (!r || !r.data.lines.length) break;
        }
        try {
          const r = await api('GET', `${this.base}?after=${this.hi}&max=${CHUNK}&wait=25s`, undefined, this.signal);
          const at = this.atBottom(); // where the reader is now, not when the poll began
          s = r.data.step;
          this.onStep(s);
          if (r.data.lines.length) {
            const before = this.hi;
            this.take(r.data.lines);
            this.append(before);
            if (at && !this.target) this.toBottom();
            if (this.query) this.search(true);
          }
        } catch (e) {
          if (this.signal.aborted || e.status === 401) return;
          await sleep(2000, this.signal);
        }
      }
      this.updateCount();
    }

    visible(l) { return this.showVerbose || l.level !== 'verbose'; }

    // rebuild makes the rows again, keeping the line in sight where it was.
    // A line not fetched yet has a row (a placeholder), so that the
    // scroll bar spans the whole log and a row's place is its line's.
    rebuild(keep) {
      const anchor = keep ? this.firstVisibleSeq() : 0;
      const rows = [];
      let loaded = 0;
      for (let seq = 1; seq <= this.hi; seq++) {
        const l = this.lines[seq];
        if (l) loaded++;
        if (!l || this.visible(l)) rows.push(seq);
      }
      this.rows = rows;
      this.loaded = loaded;
      this.spacer.style.height = (rows.length * this.rowH) + 'px';
      if (anchor) this.viewport.scrollTop = this.rowOf(anchor) * this.rowH + this.anchorOffset;
      this.updateCount();
      this.render();
    }

    // append adds the rows of the lines after sequence before.
    append(before) {
      for (let seq = before + 1; seq <= this.hi; seq++) {
        const l = this.lines[seq];
        if (l) this.loaded++;
        if (!l || this.visible(l)) this.rows.push(seq);
      }
      this.spacer.style.height = (this.rows.length * this.rowH) + 'px';
      this.updateCount();
      this.render();
    }

    updateCount() {
      this.countEl.textContent = `${num(this.hi)} lines` + (this.hasGaps() ? ` (${num(this.loaded)} loaded)` : '');
      this.loadAllBtn.hidden = !this.hasGaps();
    }

    hasGaps() { return this.loaded < this.hi; }

    // rowOf is the index of the row showing seq (or the row after it).
    rowOf(seq) {
      let lo = 0, hi = this.rows.length - 1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (this.rows[mid] < seq) lo = mid + 1; else hi = mid;
      }
      return Math.max(0, lo);
    }

    firstVisibleSeq() {
      const i = Math.floor(this.viewport.scrollTop / this.rowH);
      this.anchorOffset = this.viewport.scrollTop - i * this.rowH;
      const r = this.rows[Math.min(i, this.rows.length - 1)];
      return r === undefined ? 0 : r;
    }

    atBottom() {
      const v = this.viewport;
      return v.scrollHeight - v.scrollTop - v.clientHeight < this.rowH * 2;
    }

    toBottom() { this.viewport.scrollTop = this.viewport.scrollHeight; this.render(); }

    scrollToLine(seq) {
      const i = this.rowOf(seq);
      this.viewport.scrollTop = Math.max(0, i * this.rowH - this.viewport.clientHeight / 3);
      this.render();
    }

    async fromHash() {
      const m = location.hash.match(/^#L(\d+)$/);
      if (!m) return;
      this.target = parseInt(m[1], 10);
      if (!this.lines[this.target] && this.target <= this.hi) await this.loadChunk(this.chunkOf(this.target));
      this.scrollToLine(this.target);
    }

    schedule() {
      if (this.frame) return;
      this.frame = requestAnimationFrame(() => { this.frame = 0; this.render(); });
    }

    render() {
      const v = this.viewport;
      const first = Math.max(0, Math.floor(v.scrollTop / this.rowH) - OVERSCAN);
      const last = Math.min(this.rows.length, Math.ceil((v.scrollTop + v.clientHeight) / this.rowH) + OVERSCAN);
      this.win.style.transform = `translateY(${first * this.rowH}px)`;
      const els = [];
      for (let i = first; i < last; i++) {
        const seq = this.rows[i];
        const l = this.lines[seq];
        if (l) els.push(this.lineEl(l, i));
        else { els.push(this.placeholderEl(seq)); this.loadChunk(this.chunkOf(seq)); }
      }
      this.win.replaceChildren(...els);
    }

    lineEl(l, row) {
      const cls = ['ln'];
      if (l.level) cls.push('lvl-' + l.level);
      if (l.source !== 'stdout') cls.push('src-' + l.source);
      if (l.seq === this.target) cls.push('target');
      if (this.match >= 0 && this.matches[this.match] === row) cls.push('current');
      const t = new Date(l.time);
      const text = l.text !== undefined ? l.text : l.bytes ? decodeBytes(l.bytes) : '';
      return h('div', { class: cls.join(' '), role: 'listitem', 'data-seq': l.seq },
        h('a', { class: 'no', href: '#L' + l.seq, 'aria-label': 'Line ' + l.seq, onclick: () => { this.target = l.seq; } }, l.seq),
        h('time', { class: 'ts', datetime: l.time, title: t.toISOString() }, t.toLocaleTimeString('en-GB', { hour12: false }) + '.' + String(t.getMilliseconds()).padStart(3, '0')),
        h('span', { class: 'mark' }, l.source === 'stderr' ? 'err' : l.source === 'agent' ? 'agent' : '',
          l.level ? h('span', { class: 'sr-only' }, ' ' + l.level) : null),
        h('span', { class: 'tx' }, ...this.highlight(text)));
    }

    highlight(text) {
      if (!this.query) return [text];
      const out = [];
      const lower = text.toLowerCase();
      const q = this.query.toLowerCase();
      let at = 0, i;
      while ((i = lower.indexOf(q, at)) >= 0) {
        out.push(text.slice(at, i), h('mark', {}, text.slice(i, i + q.length)));
        at = i + q.length;
      }
      out.push(text.slice(at));
      return out;
    }

    placeholderEl(seq) {
      return h('div', { class: 'ln gap', role: 'listitem', 'aria-busy': 'true' }, h('span', { class: 'no' }, seq), h('span', { class: 'tx' }, '…'));
    }

    // Lines are fetched in chunks of CHUNK, aligned, so that a chunk in
    // sight is asked for once however the reader scrolls.
    chunkOf(seq) { return Math.floor((seq - 1) / CHUNK); }

    async loadChunk(k) {
      if (this.loading.has(k)) return;
      this.loading.add(k);
      try {
        await this.fetch(k * CHUNK, CHUNK);
        this.rebuild(true);
      } catch (e) {
        await sleep(1000, this.signal); // then again when still in sight
      } finally { this.loading.delete(k); }
    }

    async loadAll() {
      this.loadAllBtn.disabled = true;
      try {
        for (let after = 0; after < this.hi && !this.signal.aborted; after += CHUNK) {
          if (this.lines[after + 1] && this.lines[Math.min(after + CHUNK, this.hi)]) continue;
          this.loadAllBtn.textContent = `Loading… ${Math.floor(100 * after / this.hi)}%`;
          await this.fetch(after, CHUNK);
        }
        this.rebuild(true);
        if (this.query) this.search();
      } finally {
        this.loadAllBtn.disabled = false;
        this.loadAllBtn.textContent = 'Load the whole log';
      }
    }

    search(keep) {
      this.query = this.searchIn.value;
      const prev = this.matches[this.match];
      this.matches = [];
      if (this.query) {
        const q = this.query.toLowerCase();
        this.rows.forEach((r, i) => {
          const l = this.lines[r];
          if (!l) return;
          const text = l.text !== undefined ? l.text : l.bytes ? decodeBytes(l.bytes) : '';
          if (text.toLowerCase().includes(q)) this.matches.push(i);
        });
      }
      if (keep && prev !== undefined) this.match = Math.max(0, this.matches.indexOf(prev));
      else this.match = this.matches.length ? this.matches.length - 1 : -1;
      this.showMatch(!keep);
    }

    next(d) {
      if (!this.matches.length) return;
      this.match = (this.match + d + this.matches.length) % this.matches.length;
      this.showMatch(true);
    }

    showMatch(scroll) {
      const n = this.matches.length;
      this.searchInfo.textContent = !this.query ? '' : n ? `${this.match + 1} of ${n}` + (this.hasGaps() ? ' in the loaded lines' : '') : 'no match' + (this.hasGaps() ? ' in the loaded lines' : '');
      if (scroll && n) {
        const i = this.matches[this.match];
        this.viewport.scrollTop = Math.max(0, i * this.rowH - this.viewport.clientHeight / 2);
      }
      this.render();
    }
  }

  function decodeBytes(b64) {
    const bin = atob(b64);
    const u = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) u[i] = bin.charCodeAt(i);
    return new TextDecoder('utf-8', { fatal: false }).decode(u);
  }

  // ---- workers ----

  function workersView(signal) {
    document.title = 'Workers · stevedore';
    const body = h('tbody');
    const errEl = h('div');
    main.append(h('h1', {}, 'Workers'), errEl,
      h('div', { class: 'table-wrap' }, h('table', { class: 'workers rtable' },
        h('caption', { class: 'sr-only' }, 'Workers'),
        h('thead', {}, h('tr', {}, ...['Worker', 'Connection', 'Pools', 'Labels', 'Slots', 'Free', 'Engine', 'Cached images', 'Accepting', 'Agent'].map((c) =>
          h('th', { scope: 'col' }, c)))),
        body)));
    every(5000, signal, async () => {
      let r;
      try {
        r = await api('GET', '/api/workers', undefined, signal);
        errEl.replaceChildren();
      } catch (e) {
        if (e.status !== 401 && !signal.aborted) errEl.replaceChildren(errorBox(e));
        throw e;
      }
      body.replaceChildren(...r.data.map((w) => h('tr', {},
        h('th', { scope: 'row', 'data-label': 'Worker' }, w.name, w.hostname && w.hostname !== w.name ? h('div', { class: 'muted' }, w.hostname) : null,
          h('div', { class: 'muted' }, w.address ? 'listening ' + w.address : 'polling')),
        h('td', { 'data-label': 'Connection' }, w.connected ? badge('connected', 'connected') :
          h('span', {}, badge('disconnected', 'disconnected'), w.disconnected_since ? h('div', { class: 'muted' }, 'went away ', h('time', { datetime: w.disconnected_since, title: fmtTime(w.disconnected_since) }, ago(w.disconnected_since))) : null)),
        h('td', { 'data-label': 'Pools' }, (w.pools || []).join(', ')),
        h('td', { 'data-label': 'Labels', class: 'mono' }, Object.entries(w.labels || {}).map(([k, v]) => k + '=' + v).join(', ')),
        h('td', { 'data-label': 'Slots' }, w.slots),
        h('td', { 'data-label': 'Free' }, w.connected ? w.free_slots : ''),
        h('td', { 'data-label': 'Engine' }, w.docker ? 'Docker' : h('span', { class: 'muted', title: w.docker_error || '' }, 'none (host steps only)')),
        h('td', { 'data-label': 'Cached images' }, w.cached_images),
        h('td', { 'data-label': 'Accepting' }, w.incompatible ? h('span', { class: 'warn' }, w.incompatible) :
          w.not_accepting ? h('span', { class: 'warn' }, w.not_accepting) : w.connected ? 'yes' : ''),
        h('td', { 'data-label': 'Agent' }, w.agent_version || '', w.protocol_version ? h('div', { class: 'muted' }, 'protocol ' + w.protocol_version) : null))));
      if (!r.data.length) body.append(h('tr', {}, h('td', { colspan: 10, class: 'empty' }, 'No workers yet.')));
    });
  }

  route();
})();
