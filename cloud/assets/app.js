// devbridge dashboard: live updates over /ws/events, RPC calls through the
// REST API, the health chart and the log viewer. No framework and no inline
// handlers (the pages send a strict Content-Security-Policy). Text that comes
// from devices (names, log lines) only ever enters the page as textContent.
(function () {
  'use strict';

  // ---- small helpers -------------------------------------------------------

  const $ = (id) => document.getElementById(id);

  function csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : '';
  }

  /** An element with attributes and children (strings become text nodes). */
  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === false || value === null || value === undefined) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  /** Calls `fn` once `delay` ms after the last scheduling that asked for the soonest run; never two at once. */
  function scheduler(fn) {
    let timer = null;
    let due = Infinity;
    let running = false;
    let again = false;
    function schedule(delay) {
      const at = Date.now() + delay;
      if (timer !== null && at >= due) return;
      clearTimeout(timer);
      due = at;
      timer = setTimeout(async () => {
        timer = null;
        due = Infinity;
        if (running) { again = true; return; }
        running = true;
        try { await fn(); } catch (e) { console.error(e); }
        running = false;
        if (again) { again = false; schedule(0); }
      }, delay);
    }
    return schedule;
  }

  // ---- formatting (as the server's dashboard/format.rs) --------------------

  function fmtBytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let value = n;
    let unit = 0;
    while (value >= 1024 && unit < units.length - 1) { value /= 1024; unit += 1; }
    return unit === 0 ? `${n} B` : `${value.toFixed(1)} ${units[unit]}`;
  }

  function fmtDuration(secs) {
    const d = Math.floor(secs / 86400);
    const hrs = Math.floor(secs / 3600) % 24;
    const m = Math.floor(secs / 60) % 60;
    if (d > 0) return `${d} d ${hrs} h`;
    if (hrs > 0) return `${hrs} h ${m} min`;
    if (m > 0) return `${m} min`;
    return `${secs} s`;
  }

  function usage(u) {
    if (!u || typeof u.total_bytes !== 'number') return null;
    const percent = u.total_bytes === 0 ? 0 : (u.used_bytes * 100) / u.total_bytes;
    return { text: `${fmtBytes(u.used_bytes)} of ${fmtBytes(u.total_bytes)} (${percent.toFixed(0)} %)`, percent };
  }

  function fmtAgo(ms) {
    const secs = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (secs < 5) return 'just now';
    if (secs < 60) return `${secs} s ago`;
    if (secs < 3600) return `${Math.floor(secs / 60)} min ago`;
    if (secs < 86400) return `${Math.floor(secs / 3600)} h ago`;
    return new Date(ms).toLocaleDateString();
  }

  /** `<time data-ms>` in the browser's time zone; `.ago` ones as "3 min ago". */
  function localizeTimes(root) {
    for (const node of (root || document).querySelectorAll('time[data-ms]')) {
      const ms = Number(node.dataset.ms);
      if (!ms) continue;
      const full = new Date(ms).toLocaleString();
      node.dateTime = new Date(ms).toISOString();
      node.title = full;
      node.textContent = node.classList.contains('ago') ? fmtAgo(ms) : full;
    }
  }

  // ---- the API -------------------------------------------------------------

  /** A failed call, with the API's error kind. */
  class ApiError extends Error {
    constructor(kind, message, rpcError) {
      super(message);
      this.kind = kind;
      this.rpcError = rpcError;
    }
  }

  async function api(path, options) {
    const init = Object.assign({ credentials: 'same-origin', headers: {} }, options || {});
    init.headers = Object.assign({ accept: 'application/json' }, init.headers);
    if (init.body !== undefined) {
      init.headers['content-type'] = 'application/json';
      init.headers['x-csrf-token'] = csrfToken();
      init.body = JSON.stringify(init.body);
    }
    let response;
    try {
      response = await fetch('/api/v1' + path, init);
    } catch (e) {
      throw new ApiError('network', String(e));
    }
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const error = (body && body.error) || {};
      throw new ApiError(error.kind || `http_${response.status}`, error.message || response.statusText, error.rpc_error);
    }
    return body;
  }

  /** Calls a method on a device; resolves to its result. */
  async function rpc(deviceId, method, params, timeoutMs) {
    const body = { method, params: params || {} };
    if (timeoutMs) body.timeout_ms = timeoutMs;
    const answer = await api(`/devices/${encodeURIComponent(deviceId)}/rpc`, { method: 'POST', body });
    return answer.result;
  }

  /** What went wrong, in words an operator can act on. */
  function errorSentence(error) {
    const kind = error && error.kind;
    switch (kind) {
      case 'unknown_device': return 'This device is not registered (it may have been deleted).';
      case 'not_accepted': return 'This device is not accepted: accept its key before calling it.';
      case 'offline': return 'The device is offline: it has no connection to the cloud right now.';
      case 'timed_out': return 'The device did not answer in time. It may be busy or on a poor connection; try again.';
      case 'disconnected': return 'The device disconnected before it answered.';
      case 'device_error': {
        const detail = error.rpcError && error.rpcError.message ? error.rpcError.message : error.message;
        return `The device refused the request: ${detail}`;
      }
      case 'bad_request': return `The cloud refused the request: ${error.message}`;
      case 'forbidden': return `Your role does not allow this: ${error.message}.`;
      case 'unauthorized':
      case 'session_expired': return 'Your session has ended. Sign in again.';
      case 'csrf': return 'This page is out of date. Reload it and try again.';
      case 'network': return 'The cloud cannot be reached. Check your connection.';
      default: return (error && error.message) || 'Something went wrong.';
    }
  }

  // ---- live events ---------------------------------------------------------

  function setLive(state) {
    const node = $('live');
    if (!node) return;
    node.hidden = false; // only pages that subscribe show it
    node.dataset.state = state;
    node.textContent = state === 'on' ? 'live' : state === 'retrying' ? 'reconnecting…' : 'offline';
  }

  /**
   * Subscribes to `topics` on /ws/events and reconnects with exponential
   * backoff and jitter. `resync` runs whenever events may have been missed
   * (after a reconnect, or when the server says this client lagged).
   */
  function liveEvents(topics, onEvent, resync) {
    const query = topics.map((t) => 'topic=' + encodeURIComponent(t)).join('&');
    const url = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws/events?${query}`;
    let delay = 1000;
    let opened = false;
    function connect() {
      const socket = new WebSocket(url);
      socket.addEventListener('open', () => {
        delay = 1000;
        setLive('on');
        if (opened && resync) resync();
        opened = true;
      });
      socket.addEventListener('message', (message) => {
        let event;
        try { event = JSON.parse(message.data); } catch (e) { return; }
        if (event.type === 'lagged') { if (resync) resync(); return; }
        onEvent(event);
      });
      socket.addEventListener('close', () => {
        setLive('retrying');
        const wait = delay * (0.75 + Math.random() * 0.5);
        delay = Math.min(delay * 2, 30000);
        setTimeout(connect, wait);
      });
    }
    connect();
  }

  // ---- confirmation --------------------------------------------------------

  /** Asks in a modal dialog; resolves to true when the operator confirms. */
  function confirmAction(text, label) {
    const dialog = $('confirm-dialog');
    if (!dialog || typeof dialog.showModal !== 'function') {
      return Promise.resolve(window.confirm(text));
    }
    $('confirm-text').textContent = text;
    $('confirm-ok').textContent = label || 'Confirm';
    dialog.returnValue = '';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.showModal();
    });
  }

  function dialogOpen() {
    const dialog = $('confirm-dialog');
    return Boolean(dialog && dialog.open);
  }

  // Forms with data-confirm (reject, delete) ask first.
  document.addEventListener('submit', async (event) => {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || !form.dataset.confirm) return;
    if (form.dataset.confirmed === 'yes') return;
    event.preventDefault();
    if (await confirmAction(form.dataset.confirm, form.dataset.confirmLabel)) {
      form.dataset.confirmed = 'yes';
      form.requestSubmit();
    }
  });

  // ---- devices page --------------------------------------------------------

  const DEVICE_LIST_EVENTS = ['device.new_key', 'device.status', 'device.online', 'device.offline', 'device.deleted', 'device.key_mismatch', 'device.tags'];

  /** The preauthorize form's file input fills the key textarea (admins only see it). */
  function preauthorizeKeyFile() {
    const input = $('preauthorize-file');
    if (!input) return;
    const textarea = $('preauthorize-key');
    const message = $('preauthorize-file-message');
    const tell = (text, kind) => {
      message.textContent = text;
      message.className = 'message small' + (kind ? ' ' + kind : '');
      message.hidden = !text;
    };
    input.addEventListener('change', async () => {
      const file = input.files && input.files[0];
      if (!file) return;
      // A public key PEM is about 113 bytes; anything large is the wrong file.
      if (file.size > 4096) { tell(`${file.name} is too large to be a public key.`, 'error'); return; }
      try {
        const text = (await file.text()).trim();
        if (text.includes('PRIVATE KEY')) {
          tell(`${file.name} holds a private key, which must never leave the device: choose its public key file.`, 'error');
          return;
        }
        textarea.value = text;
        tell(`Read the key from ${file.name}.`, 'ok');
      } catch (e) {
        tell(`Could not read ${file.name}.`, 'error');
      }
    });
  }

  /**
   * A scheduler that redraws `target` with the server-rendered fragment at
   * `url` (our own escaped HTML), sending a signed-out page to sign in.
   */
  function fragmentRefresh(url, target) {
    return scheduler(async () => {
      const response = await fetch(url, { credentials: 'same-origin' });
      if (response.redirected && new URL(response.url).pathname === '/login') {
        location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
        return;
      }
      if (!response.ok) return;
      target.innerHTML = await response.text();
      localizeTimes(target);
    });
  }

  function devicesPage() {
    preauthorizeKeyFile();
    // The job form calls the devices the list shows: it carries the filter.
    const jobForm = $('job-form');
    const carryFilter = () => {
      for (const name of ['q', 'state', 'tag']) jobForm.elements[name].value = form.elements[name].value;
    };
    const list = $('device-list');
    const form = $('device-filter');
    const query = () => new URLSearchParams(new FormData(form)).toString();
    const refresh = scheduler(async () => {
      // Never swap the rows under an open confirmation: its form would vanish.
      if (dialogOpen()) { refresh(500); return; }
      const response = await fetch('/fragments/devices?' + query(), { credentials: 'same-origin' });
      if (response.redirected && new URL(response.url).pathname === '/login') {
        location.assign('/login?next=' + encodeURIComponent(location.pathname + location.search));
        return;
      }
      if (!response.ok) return;
      const html = await response.text();
      if (dialogOpen()) { refresh(500); return; }
      list.innerHTML = html; // our own server-rendered, escaped HTML
      localizeTimes(list);
    });
    const refilter = () => {
      carryFilter();
      history.replaceState(null, '', '/devices?' + query());
      refresh(0);
    };
    let typing = null;
    form.addEventListener('input', () => { clearTimeout(typing); typing = setTimeout(refilter, 250); });
    form.addEventListener('submit', (event) => { event.preventDefault(); refilter(); });
    liveEvents(['devices'], (event) => {
      if (DEVICE_LIST_EVENTS.includes(event.type)) refresh(100);
      else if (event.type === 'device.health') refresh(5000); // numbers only: no hurry
    }, () => refresh(0));
  }

  // ---- device page ---------------------------------------------------------

  const HOUR_MS = 3600 * 1000;

  function healthChart(container) {
    const NS = 'http://www.w3.org/2000/svg';
    const H = 150, L = 34, R = 10, T = 10, B = 22;
    let samples = [];
    const svgNode = (tag, attrs) => {
      const node = document.createElementNS(NS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
      return node;
    };
    function draw() {
      const now = Date.now();
      samples = samples.filter((s) => s.at >= now - HOUR_MS);
      // Drawn at the container's own width, so that text is never stretched.
      const W = Math.max(240, Math.round(container.clientWidth || 600));
      const svg = svgNode('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H });
      const x = (at) => L + ((at - (now - HOUR_MS)) / HOUR_MS) * (W - L - R);
      const y = (p) => T + (1 - Math.min(100, Math.max(0, p)) / 100) * (H - T - B);
      for (const p of [0, 50, 100]) {
        svg.append(svgNode('line', { class: 'grid', x1: L, x2: W - R, y1: y(p), y2: y(p) }));
        const label = svgNode('text', { class: 'axis-label', x: L - 4, y: y(p) + 3, 'text-anchor': 'end' });
        label.textContent = `${p}%`;
        svg.append(label);
      }
      for (const [at, text, anchor] of [[now - HOUR_MS, '60 min ago', 'start'], [now - HOUR_MS / 2, '30 min ago', 'middle'], [now, 'now', 'end']]) {
        const label = svgNode('text', { class: 'axis-label', x: x(at), y: H - 5, 'text-anchor': anchor });
        label.textContent = text;
        svg.append(label);
      }
      const series = [
        ['cpu', (h) => (typeof h.cpu_percent === 'number' ? h.cpu_percent : null)],
        ['memory', (h) => { const u = usage(h.memory); return u ? u.percent : null; }],
      ];
      for (const [name, pick] of series) {
        const points = samples
          .map((s) => [s.at, pick(s.health || {})])
          .filter(([, v]) => v !== null)
          .map(([at, v]) => `${x(at).toFixed(1)},${y(v).toFixed(1)}`);
        if (points.length === 1) points.push(points[0]);
        if (points.length) svg.append(svgNode('polyline', { class: `line ${name}`, points: points.join(' ') }));
      }
      if (!samples.length) {
        const note = svgNode('text', { class: 'empty-chart', x: W / 2, y: H / 2, 'text-anchor': 'middle' });
        note.textContent = 'No health reports in the last hour';
        svg.append(note);
      }
      container.replaceChildren(svg);
    }
    let resizing = null;
    window.addEventListener('resize', () => { clearTimeout(resizing); resizing = setTimeout(draw, 200); });
    return {
      set(list) { samples = list.slice(); draw(); },
      add(sample) { samples.push(sample); draw(); },
      redraw: draw,
    };
  }

  function showHealth(report) {
    const set = (id, text) => { const node = $(id); if (node) node.textContent = text; };
    const meter = (id, value) => { const node = $(id); if (node) node.value = value; };
    const memory = usage(report.memory);
    const disk = usage(report.disk);
    set('health-cpu', typeof report.cpu_percent === 'number' ? `${report.cpu_percent.toFixed(0)} %` : '—');
    meter('cpu-meter', report.cpu_percent || 0);
    set('health-memory', memory ? memory.text : '—');
    meter('memory-meter', memory ? memory.percent : 0);
    set('health-disk', disk ? disk.text : '—');
    meter('disk-meter', disk ? disk.percent : 0);
    set('health-load', Array.isArray(report.load) ? report.load.map((l) => Number(l).toFixed(2)).join(' · ') : '—');
    set('health-uptime', typeof report.uptime_secs === 'number' ? fmtDuration(report.uptime_secs) : '—');
    set('health-containers', report.containers_running === null || report.containers_running === undefined ? '—' : String(report.containers_running));
    const note = $('no-health');
    if (note) note.remove();
  }

  function portsText(ports) {
    return (ports || []).map((p) => {
      const inside = `${p.private}/${p.type || 'tcp'}`;
      return p.public ? `${p.ip ? p.ip + ':' : ''}${p.public} → ${inside}` : inside;
    }).join(', ');
  }

  /** Fills the System card from `system.info`; device text only as textContent. */
  function systemInfo(deviceId, mayCall) {
    const message = $('system-message');
    const tell = (text, kind) => {
      message.textContent = text;
      message.className = 'small ' + (kind === 'error' ? 'message error' : 'muted');
      message.hidden = !text;
    };
    const set = (id, value) => { $(id).textContent = value === null || value === undefined || value === '' ? '—' : String(value); };
    return async function load() {
      if (!mayCall.has('system.info')) { tell('Your role does not allow asking the device what system it is.'); return; }
      try {
        const info = (await rpc(deviceId, 'system.info', {})) || {};
        set('system-hostname', info.hostname);
        set('system-os', [info.os_name, info.os_version && !(info.os_name || '').includes(info.os_version) ? `(${info.os_version})` : ''].filter(Boolean).join(' '));
        set('system-kernel', info.kernel_version);
        set('system-architecture', info.architecture);
        set('system-cpus', info.cpu_count);
        set('system-memory', typeof info.memory_total_bytes === 'number' ? fmtBytes(info.memory_total_bytes) : null);
        set('system-docker', info.docker_version);
        tell(info.docker_error ? `As the worker sees it; Docker did not answer: ${info.docker_error}` : '');
      } catch (error) {
        tell(error.kind === 'device_error' && error.rpcError && error.rpcError.code === -32601
          ? 'This device\'s worker does not tell what system it is (no system.info).'
          : errorSentence(error), 'error');
      }
    };
  }

  const CONTAINER_EVENTS_SHOWN = 50;

  /** Prepends a container event the device just reported to the list. */
  function addContainerEvent(event) {
    const body = $('container-events-body');
    const data = event.data || {};
    const text = (value) => (typeof value === 'string' ? value.slice(0, 200) : '');
    const row = h('tr', {},
      h('td', {}, h('time', { 'data-ms': event.at }, String(event.at))),
      h('td', {}, text(data.action)),
      h('td', {}, text(data.name)),
      h('td', {}, text(data.image)),
      h('td', {}, text(data.health)));
    localizeTimes(row);
    body.prepend(row);
    while (body.childElementCount > CONTAINER_EVENTS_SHOWN) body.lastElementChild.remove();
    $('container-events').hidden = false;
    $('container-events-none').hidden = true;
  }

  /** Most bytes of params the console sends (the cloud takes up to its body limit). */
  const MAX_CONSOLE_PARAMS_BYTES = 64 * 1024;
  const ROLE_RANK = { viewer: 0, operator: 1, admin: 2 };

  /** The least role `method` needs under METHOD_ROLES rules (`pattern=role,…`), as roles.rs reads them. */
  function neededRole(rules, method) {
    for (const rule of rules) {
      const [pattern, role] = rule.split('=');
      const matches = pattern.endsWith('*') ? method.startsWith(pattern.slice(0, -1)) : method === pattern;
      if (matches) return role;
    }
    return 'operator';
  }

  /**
   * The RPC console: the methods the device's rpc.discover lists that the
   * caller's role allows, params edited as JSON, the answer or the error.
   */
  function rpcConsole(deviceId, mayCall) {
    const section = $('rpc-console');
    const details = $('console-details');
    const form = $('console-form');
    const select = $('console-method');
    const textarea = $('console-params');
    const button = $('console-call');
    const names = $('console-param-names');
    const message = $('console-message');
    const output = $('console-result');
    const rules = (section.dataset.methodRoles || '').split(',').filter(Boolean);
    const rank = ROLE_RANK[section.dataset.role] || 0;
    const allowed = (method) => rank >= (ROLE_RANK[neededRole(rules, method)] || 0);
    let described = {};
    let loading = false;
    let loaded = false;

    const tell = (text, kind) => {
      message.textContent = text;
      message.className = 'message' + (kind ? ' ' + kind : '');
      message.hidden = !text;
    };
    const show = (value) => {
      output.textContent = value === undefined ? '' : JSON.stringify(value, null, 2);
      output.hidden = value === undefined;
    };

    function describe() {
      const method = select.value;
      const params = described[method];
      if (!method) names.textContent = '';
      else if (!Array.isArray(params)) names.textContent = 'The device does not describe this method\'s params.';
      else if (params.length === 0) names.textContent = 'This method takes no params: send {}.';
      else names.textContent = `Params: ${params.join(', ')}`;
    }

    async function discover() {
      if (loading || loaded) return;
      if (!mayCall.has('rpc.discover')) {
        select.replaceChildren(h('option', { value: '' }, 'Not allowed'));
        tell('Your role does not allow asking the device which methods it serves (rpc.discover).', 'error');
        return;
      }
      loading = true;
      tell('Asking the device which methods it serves…');
      try {
        const answer = (await rpc(deviceId, 'rpc.discover', {})) || {};
        const methods = (Array.isArray(answer.methods) ? answer.methods : []).filter((m) => typeof m === 'string');
        described = answer.params && typeof answer.params === 'object' ? answer.params : {};
        const offered = methods.filter(allowed);
        select.replaceChildren(...offered.map((m) => h('option', { value: m }, m)));
        select.disabled = button.disabled = offered.length === 0;
        loaded = true;
        const hidden = methods.length - offered.length;
        tell(offered.length === 0 ? 'Your role allows none of the methods this device serves.'
          : hidden > 0 ? `${hidden} method${hidden === 1 ? '' : 's'} the device serves need${hidden === 1 ? 's' : ''} a higher role and ${hidden === 1 ? 'is' : 'are'} not offered.` : '');
        describe();
      } catch (error) {
        select.replaceChildren(h('option', { value: '' }, 'Unavailable'));
        tell(`${errorSentence(error)} Close and open the console to try again.`, 'error');
      } finally {
        loading = false;
      }
    }

    /** The params the textarea holds, or why they cannot be sent. */
    function params() {
      const text = textarea.value.trim() || '{}';
      const size = new Blob([text]).size;
      if (size > MAX_CONSOLE_PARAMS_BYTES) throw new Error(`The params are ${size} bytes; at most ${MAX_CONSOLE_PARAMS_BYTES}.`);
      let value;
      try { value = JSON.parse(text); } catch (e) { throw new Error(`The params are not JSON: ${e.message}`); }
      if (value === null || typeof value !== 'object') throw new Error('The params must be a JSON object or array.');
      return value;
    }

    details.addEventListener('toggle', () => {
      if (details.open) discover();
      if (!details.open && !loaded) tell('');
    });
    select.addEventListener('change', describe);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const method = select.value;
      if (!method || !allowed(method)) { tell('Choose a method.', 'error'); return; }
      let value;
      try { value = params(); } catch (e) { tell(e.message, 'error'); show(undefined); return; }
      button.disabled = true;
      tell(`Calling ${method}…`);
      show(undefined);
      try {
        const result = await rpc(deviceId, method, value);
        tell(`${method} answered.`, 'ok');
        show(result === undefined ? null : result);
      } catch (error) {
        tell(`${error.kind}: ${error.message}`, 'error');
        if (error.rpcError) show(error.rpcError);
      } finally {
        button.disabled = false;
      }
    });
  }

  function devicePage() {
    const head = $('device-head');
    const deviceId = head.dataset.deviceId;
    const message = $('containers-message');
    const table = $('containers-table');
    const body = $('containers-body');
    const chart = healthChart($('health-chart'));
    // The methods the caller's role may call (the server refuses the others
    // anyway; the page just does not offer them).
    const mayCall = new Set((head.dataset.mayCall || '').split(' ').filter(Boolean));

    function say(text, kind) {
      message.textContent = text;
      message.className = 'message' + (kind ? ' ' + kind : '');
      message.hidden = !text;
    }

    function setStatus(status) {
      head.dataset.status = status;
      const badge = $('device-status');
      badge.textContent = status;
      badge.className = `badge status ${status}`;
      for (const form of head.querySelectorAll('form[data-hide-when]')) {
        form.hidden = form.dataset.hideWhen === status;
      }
    }

    function setOnline(online) {
      const badge = $('device-online');
      badge.textContent = online ? 'online' : 'offline';
      badge.className = `badge ${online ? 'online' : 'offline'}`;
    }

    async function act(action, name) {
      const verbs = { start: 'Start', stop: 'Stop', restart: 'Restart' };
      const doing = { start: 'Starting', stop: 'Stopping', restart: 'Restarting' };
      const ok = await confirmAction(`${verbs[action]} container ${name} on ${deviceId}?`, verbs[action]);
      if (!ok) return;
      for (const b of body.querySelectorAll('button')) b.disabled = true;
      say(`${doing[action]} ${name}…`);
      try {
        await rpc(deviceId, `containers.${action}`, { container: name });
        say(`${verbs[action]} of ${name} done.`, 'ok');
      } catch (error) {
        say(errorSentence(error), 'error');
      }
      await loadContainers(true);
    }

    function containerRow(c) {
      const name = (c.names && c.names[0]) || c.id.slice(0, 12);
      const running = c.state === 'running';
      const button = (action, label) => {
        const b = h('button', { type: 'button', class: action === 'stop' ? 'danger' : '', 'data-action': action, 'aria-label': `${label} ${name}` }, label);
        b.addEventListener('click', () => act(action, name));
        return b;
      };
      const logs = mayCall.has('containers.logs')
        ? h('a', { href: `/devices/${encodeURIComponent(deviceId)}/containers/${encodeURIComponent(name)}/logs`, class: 'logs-link' }, 'Logs')
        : null;
      const offered = (action, label) => (mayCall.has(`containers.${action}`) ? button(action, label) : null);
      return h('tr', { 'data-container': name },
        h('td', {}, h('strong', {}, name)),
        h('td', {}, c.image || ''),
        h('td', {}, h('span', { class: `badge ${c.state || ''}` }, c.state || '')),
        h('td', {}, c.status || ''),
        h('td', { class: 'small' }, portsText(c.ports)),
        h('td', { class: 'actions' }, logs, ' ',
          running ? [offered('stop', 'Stop'), ' ', offered('restart', 'Restart')] : offered('start', 'Start')));
    }

    async function loadContainers(keepMessage) {
      if (!mayCall.has('containers.list')) {
        say('Your role does not allow listing the containers of a device.');
        return;
      }
      if (!keepMessage && table.hidden) say('Loading containers…');
      try {
        const result = await rpc(deviceId, 'containers.list', { all: true });
        const containers = (result && result.containers) || [];
        body.replaceChildren(...containers.map(containerRow));
        table.hidden = containers.length === 0;
        if (!keepMessage) say(containers.length ? '' : 'No containers on this device.');
      } catch (error) {
        table.hidden = true;
        say(errorSentence(error), 'error');
      }
    }
    const refreshContainers = scheduler(() => loadContainers(false));

    async function loadHealth() {
      try {
        const answer = await api(`/devices/${encodeURIComponent(deviceId)}/health`);
        const samples = answer.samples || [];
        chart.set(samples);
        if (samples.length) showHealth(samples[samples.length - 1].health);
      } catch (error) {
        chart.set([]);
      }
    }

    async function reloadDevice() {
      try {
        const answer = await api(`/devices/${encodeURIComponent(deviceId)}`);
        setStatus(answer.device.status);
        setOnline(answer.device.online);
      } catch (error) { /* the next event tells */ }
    }

    $('containers-refresh').addEventListener('click', () => refreshContainers(0));
    setInterval(chart.redraw, 60 * 1000);
    loadHealth();
    loadContainers(false);
    const loadSystemInfo = systemInfo(deviceId, mayCall);
    loadSystemInfo();
    rpcConsole(deviceId, mayCall);
    const refreshQueuedCalls = fragmentRefresh(
      `/fragments/devices/${encodeURIComponent(deviceId)}/calls`, $('queued-calls-list'));

    liveEvents([`device.${deviceId}`], (event) => {
      switch (event.type) {
        case 'device.health': {
          chart.add({ at: event.at, health: event.data });
          showHealth(event.data);
          const seen = $('last-seen');
          if (seen) { seen.dataset.ms = String(event.at); localizeTimes(seen.parentNode); }
          break;
        }
        case 'snapshot':
          // Sent first on every (re)connect: the state now, whatever was missed.
          if (event.device) { setStatus(event.device.status); setOnline(event.device.online); }
          refreshQueuedCalls(0);
          break;
        case 'device.queued_call':
          refreshQueuedCalls(100);
          break;
        case 'device.online':
          setOnline(true);
          if (event.data && event.data.status) setStatus(event.data.status);
          refreshContainers(300);
          loadSystemInfo();
          break;
        case 'device.offline':
          setOnline(false);
          refreshContainers(300);
          break;
        case 'device.status':
          setStatus(event.data.status);
          refreshContainers(300);
          loadSystemInfo();
          break;
        case 'device.container_event':
          addContainerEvent(event);
          refreshContainers(300);
          break;
        case 'device.deleted':
          setOnline(false);
          table.hidden = true;
          say('This device was deleted.', 'error');
          break;
        default:
      }
    }, () => { reloadDevice(); loadHealth(); refreshContainers(0); });
  }

  // ---- logs page -----------------------------------------------------------

  const MAX_LOG_LINES = 5000;
  const FOLLOW_EVERY_MS = 2000;

  /** Seconds since the epoch of Docker's RFC 3339 timestamp (nanoseconds dropped). */
  function timestampSecs(ts) {
    const ms = Date.parse(String(ts).replace(/\.\d+/, ''));
    return Number.isNaN(ms) ? null : Math.floor(ms / 1000);
  }

  function logsPage() {
    const head = $('logs-head');
    const deviceId = head.dataset.deviceId;
    const container = head.dataset.container;
    const output = $('log-lines');
    const status = $('log-status');
    const controls = $('log-controls');
    const follow = $('log-follow');
    const filter = $('log-filter');

    let generation = 0; // answers of an older request are dropped
    let lastSecond = null; // newest second shown
    let seenInLastSecond = new Set(); // lines of that second already shown
    let truncated = false;
    let followTimer = null;
    let problem = '';

    function params() {
      const p = { container, timestamps: true, stdout: $('log-stdout').checked, stderr: $('log-stderr').checked };
      return p;
    }

    function showStatus() {
      const count = output.childElementCount;
      let text = problem || `${count} line${count === 1 ? '' : 's'}.`;
      if (!problem && truncated) text += ' The device cut the answer at its size limit: ask for fewer lines or a later start.';
      if (follow.checked) text += ' Following: new lines appear as they are written.';
      status.textContent = text;
      status.className = 'message' + (problem ? ' error' : '');
    }

    function matches(text) {
      const needle = filter.value.trim().toLowerCase();
      return !needle || text.toLowerCase().includes(needle);
    }

    function append(lines) {
      const atBottom = output.scrollHeight - output.scrollTop - output.clientHeight < 40;
      const fragment = document.createDocumentFragment();
      for (const line of lines) {
        const second = timestampSecs(line.timestamp);
        const key = `${line.timestamp}\u0000${line.stream}\u0000${line.text}`;
        if (second !== null && lastSecond !== null) {
          if (second < lastSecond) continue;
          if (second === lastSecond && seenInLastSecond.has(key)) continue;
        }
        if (second !== null) {
          if (lastSecond === null || second > lastSecond) { lastSecond = second; seenInLastSecond = new Set(); }
          seenInLastSecond.add(key);
        }
        const when = line.timestamp ? new Date(Date.parse(line.timestamp)).toLocaleTimeString() : '';
        const row = h('div', { class: `line ${line.stream}` },
          h('span', { class: 'ts', title: line.timestamp || '' }, when),
          h('span', { class: 'text' }, line.text));
        row.hidden = !matches(line.text);
        fragment.append(row);
      }
      output.append(fragment);
      while (output.childElementCount > MAX_LOG_LINES) output.firstElementChild.remove();
      if (atBottom) output.scrollTop = output.scrollHeight;
    }

    async function fetchLines(initial) {
      const mine = generation;
      const p = params();
      const tail = parseInt($('log-tail').value, 10);
      const since = parseInt($('log-since').value, 10);
      if (!initial && lastSecond !== null) {
        p.since = lastSecond; // inclusive: lines of that second come again and are dropped
      } else {
        if (tail > 0) p.tail = tail;
        if (since > 0) p.since = Math.floor(Date.now() / 1000) - since;
      }
      try {
        const result = await rpc(deviceId, 'containers.logs', p);
        if (mine !== generation) return;
        problem = '';
        if (initial) truncated = Boolean(result.truncated);
        append(result.lines || []);
      } catch (error) {
        if (mine !== generation) return;
        problem = errorSentence(error);
      }
      showStatus();
    }

    function scheduleFollow() {
      clearTimeout(followTimer);
      if (!follow.checked) return;
      const mine = generation;
      followTimer = setTimeout(async () => {
        if (mine !== generation || !follow.checked) return;
        await fetchLines(false);
        if (mine === generation) scheduleFollow();
      }, FOLLOW_EVERY_MS);
    }

    async function load() {
      generation += 1;
      clearTimeout(followTimer);
      output.replaceChildren();
      lastSecond = null;
      seenInLastSecond = new Set();
      truncated = false;
      status.textContent = 'Loading…';
      await fetchLines(true);
      scheduleFollow();
    }

    controls.addEventListener('submit', (event) => { event.preventDefault(); load(); });
    for (const id of ['log-stdout', 'log-stderr', 'log-since']) $(id).addEventListener('change', load);
    follow.addEventListener('change', () => {
      showStatus();
      if (follow.checked) { fetchLines(false).then(scheduleFollow); } else clearTimeout(followTimer);
    });
    filter.addEventListener('input', () => {
      for (const row of output.children) row.hidden = !matches(row.lastElementChild.textContent);
    });
    load();
  }

  // ---- audit page ----------------------------------------------------------

  function auditPage() {
    const form = $('audit-filter');
    if (form.dataset.live !== 'true') return;
    const body = $('audit-body');
    const want = {
      source: form.dataset.source,
      actor: form.dataset.actor,
      action: form.dataset.action,
      target: form.dataset.target,
    };
    const failuresOnly = form.dataset.failuresOnly === 'true';
    const pageSize = Math.max(body.childElementCount, 50);

    function matches(entry) {
      for (const [key, value] of Object.entries(want)) {
        if (value && entry[key] !== value) return false;
      }
      return !(failuresOnly && entry.outcome === 'ok');
    }

    function row(entry) {
      const ok = entry.outcome === 'ok';
      const tr = h('tr', { class: ok ? '' : 'failure', 'data-key': `${entry.source}-${entry.id}` },
        h('td', { class: 'nowrap' }, h('time', { 'data-ms': entry.at }, String(entry.at))),
        h('td', {}, entry.source),
        h('td', { class: 'nowrap' }, entry.actor),
        h('td', { class: 'nowrap' }, entry.action),
        h('td', { class: 'nowrap' }, entry.target),
        h('td', {}, h('span', { class: `outcome ${ok ? 'ok' : 'bad'}` }, entry.outcome),
          entry.count > 1 ? h('span', { class: 'muted', title: 'attempts alike within an hour, the latest shown' }, ` ×${entry.count}`) : ''),
        h('td', { class: 'detail' }, entry.detail),
        h('td', { class: 'num' }, entry.latency_ms === null || entry.latency_ms === undefined ? '' : `${entry.latency_ms} ms`));
      localizeTimes(tr);
      return tr;
    }

    liveEvents(['audit'], (event) => {
      if (event.type !== 'audit.entry' || !matches(event.data)) return;
      // An aggregated refusal comes again with a higher count: it replaces its row.
      const key = `${event.data.source}-${event.data.id}`;
      for (const old of body.querySelectorAll('tr[data-key]')) if (old.dataset.key === key) old.remove();
      body.prepend(row(event.data));
      while (body.childElementCount > pageSize) body.lastElementChild.remove();
    }, () => location.reload());
  }

  // ---- start ---------------------------------------------------------------

  localizeTimes(document);
  setInterval(() => {
    for (const node of document.querySelectorAll('time.ago[data-ms]')) {
      const ms = Number(node.dataset.ms);
      if (ms) node.textContent = fmtAgo(ms); // 0: never, as the server wrote it
    }
  }, 15000);
  // ---- job page ------------------------------------------------------------

  /** Redraws the job's progress and outcomes as they come (`job.<id>` events). */
  function jobPage() {
    const id = $('job-head').dataset.jobId;
    const refresh = fragmentRefresh(`/fragments/jobs/${id}`, $('job-live'));
    liveEvents([`job.${id}`], (event) => {
      if (event.type === 'job.progress') refresh(event.data.state === 'running' ? 250 : 0);
    }, () => refresh(0));
    // A job that ended before the socket opened sends nothing more.
    refresh(0);
  }

  const pages = { devices: devicesPage, device: devicePage, logs: logsPage, audit: auditPage, job: jobPage };
  const page = pages[document.body.dataset.page];
  if (page) page();
}());
