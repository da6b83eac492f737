// onstage join page: publishes the camera and microphone over WHIP, learns who is
// on the stage from the events WebSocket, subscribes to every other publisher and
// shows them live. It speaks the forms IVS's client libraries use: publish at
// `{whip_url}/publish/{jti}`, events at `{events_url}?topic={stage}/publishers`,
// STAGE_STATEs taken only when their sequence number rises. Plain browser
// JavaScript, no build step.
//
// State for tests and curious humans is kept on `window.onstage` (see `state`).
'use strict';

(() => {
  const STATS_INTERVAL_MS = 500;
  const PING_INTERVAL_MS = 10_000;
  const ICE_GATHERING_TIMEOUT_MS = 3_000;
  const RETRY_DELAY_MS = 2_000;
  const MAX_FAILURES = 3; // in a row, before the page gives up reconnecting
  const STABLE_MS = 30_000; // a connection that lasted this long resets the count
  // Events-socket close codes after which reconnecting is pointless.
  const FINAL_CLOSE_CODES = {
    4001: 'This token joined the stage again from another tab or window',
    4003: 'You were removed from the stage',
    4004: 'The stage was deleted',
    4005: 'This token was revoked',
  };

  const $ = (id) => document.getElementById(id);

  /** Everything the page knows, readable from tests as `window.onstage`. */
  const state = {
    status: 'idle', // idle | joining | joined | left | error
    stageId: null,
    participantId: null,
    userId: null,
    canPublish: false,
    canSubscribe: false,
    published: false, // the publish connection is up
    framesEncoded: 0,
    eventsConnected: false,
    participants: [], // last STAGE_STATE participants
    serverMessages: [], // aws:ivs:JOIN_ERROR / aws:ivs:DISCONNECT received
    remotes: {}, // participantId -> { userId, connectionState, framesDecoded, audioPacketsReceived }
    errors: [],
  };
  window.onstage = state;

  let token = null;
  let claims = null;
  let localStream = null;
  let publisher = null; // { pc, location }
  const subscriptions = new Map(); // participantId -> { pc, location, tile }
  const failures = new Map(); // participantId -> failed subscribe attempts in a row
  let socket = null;
  let socketFailures = 0; // refused or failed attempts in a row
  let publishFailures = 0; // publish connections in a row that failed soon after starting
  let leaving = false;

  // --- status and errors ----------------------------------------------------------

  function setStatus(text) {
    $('status').textContent = text;
  }

  function showError(text) {
    state.errors.push(text);
    const el = $('error');
    el.textContent = text;
    el.hidden = false;
    console.warn('onstage:', text);
  }

  function clearError() {
    $('error').hidden = true;
    $('error').textContent = '';
  }

  // --- the token ---------------------------------------------------------------------

  /** The claims of a JWT, not verified: the server does that. */
  function decodeClaims(jwt) {
    const parts = jwt.split('.');
    if (parts.length !== 3) throw new Error('a participant token has three dot-separated parts');
    const b64 = parts[1].replace(/-/g, '+').replace(/_/g, '/');
    const padded = b64 + '='.repeat((4 - (b64.length % 4)) % 4);
    const bytes = Uint8Array.from(atob(padded), (c) => c.charCodeAt(0));
    const json = JSON.parse(new TextDecoder().decode(bytes));
    for (const claim of ['whip_url', 'events_url', 'topic', 'jti']) {
      if (typeof json[claim] !== 'string') throw new Error(`the token has no "${claim}" claim`);
    }
    return json;
  }

  // --- HTTP to the media plane ----------------------------------------------------------

  /** POSTs an SDP offer; resolves to { answer, location } or throws with the server's reason. */
  async function postOffer(url, sdp) {
    const response = await fetch(url, {
      method: 'POST',
      headers: {
        Authorization: `Bearer ${token}`,
        'Content-Type': 'application/sdp',
        'X-Stages-Platform': 'web',
        'X-Stages-SDK': 'onstage-join-page',
      },
      body: sdp,
    });
    const body = await response.text();
    if (response.status !== 201) {
      const reason = body.trim() || response.statusText;
      const error = new Error(`${response.status}: ${reason}`);
      error.status = response.status;
      throw error;
    }
    const location = response.headers.get('Location');
    return { answer: body, location: location ? new URL(location, response.url).href : null };
  }

  function deleteSession(location) {
    if (!location) return;
    // keepalive lets the request outlive the page when it is being unloaded.
    fetch(location, { method: 'DELETE', headers: { Authorization: `Bearer ${token}` }, keepalive: true })
      .catch(() => {});
  }

  /** Resolves when ICE gathering is complete (the server wants every candidate in the offer). */
  function iceGatheringComplete(pc) {
    if (pc.iceGatheringState === 'complete') return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        pc.removeEventListener('icegatheringstatechange', check);
        clearTimeout(timer);
        resolve();
      };
      const check = () => pc.iceGatheringState === 'complete' && done();
      const timer = setTimeout(done, ICE_GATHERING_TIMEOUT_MS);
      pc.addEventListener('icegatheringstatechange', check);
    });
  }

  /** Offer → wait for candidates → POST → answer. Returns the session location. */
  async function negotiate(pc, url) {
    await pc.setLocalDescription(await pc.createOffer());
    await iceGatheringComplete(pc);
    const { answer, location } = await postOffer(url, pc.localDescription.sdp);
    await pc.setRemoteDescription({ type: 'answer', sdp: answer });
    return location;
  }

  // --- publishing -----------------------------------------------------------------------

  async function openCamera() {
    const attempts = [{ video: true, audio: true }, { video: true }, { audio: true }];
    let lastError = null;
    for (const constraints of attempts) {
      try {
        return await navigator.mediaDevices.getUserMedia(constraints);
      } catch (e) {
        lastError = e;
      }
    }
    throw lastError;
  }

  async function publish() {
    if (!navigator.mediaDevices) {
      throw new Error('camera access needs a secure context (https, or http://localhost)');
    }
    if (!localStream) {
      setStatus('Opening camera and microphone…');
      localStream = await openCamera();
      $('local-video').srcObject = localStream;
      $('local').hidden = false;
    }
    setStatus('Publishing…');
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    for (const track of localStream.getTracks()) {
      pc.addTransceiver(track, { direction: 'sendonly', streams: [localStream] });
    }
    const current = { pc, location: null, startedAt: Date.now() };
    publisher = current;
    pc.addEventListener('connectionstatechange', () => {
      if (publisher !== current) return;
      state.published = pc.connectionState === 'connected';
      if (pc.connectionState === 'connected') {
        setStatus('Live: you are publishing.');
      } else if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
        // Closed by the server: replaced by a newer publish, or the participant was removed.
        publishFailures = Date.now() - current.startedAt < STABLE_MS ? publishFailures + 1 : 1;
        if (publishFailures >= MAX_FAILURES) {
          showError('Publishing keeps failing: is this token in use in another tab, or was it revoked?');
          current.pc.close();
          publisher = null;
        } else {
          setStatus('The publish connection failed; retrying…');
          retryPublish(current);
        }
      }
    });
    try {
      current.location = await negotiate(pc, `${claims.whip_url}/publish/${encodeURIComponent(claims.jti)}`);
    } catch (e) {
      pc.close();
      if (publisher === current) publisher = null;
      throw e;
    }
    if (publisher !== current) deleteSession(current.location); // left while negotiating
  }

  function retryPublish(failed) {
    failed.pc.close();
    deleteSession(failed.location);
    setTimeout(() => {
      if (leaving || publisher !== failed) return;
      publish().catch((e) => showError(`Could not publish: ${e.message}`));
    }, RETRY_DELAY_MS);
  }

  // --- subscribing ----------------------------------------------------------------------

  function userIdOf(participantId) {
    const p = state.participants.find((x) => x.id === participantId);
    return (p && p.userId) || participantId;
  }

  function createTile(participantId) {
    const figure = document.createElement('figure');
    figure.className = 'tile remote';
    figure.dataset.participantId = participantId;
    const video = document.createElement('video');
    video.autoplay = true;
    video.playsInline = true;
    video.setAttribute('aria-label', `Video of ${userIdOf(participantId)}`);
    const caption = document.createElement('figcaption');
    const label = document.createElement('span');
    label.className = 'user-id';
    label.textContent = userIdOf(participantId);
    caption.append(label);
    const unmute = document.createElement('button');
    unmute.type = 'button';
    unmute.className = 'unmute';
    unmute.textContent = 'Unmute';
    unmute.hidden = true;
    unmute.addEventListener('click', () => {
      video.muted = false;
      unmute.hidden = true;
      video.play().catch(() => {});
    });
    caption.append(unmute);
    figure.append(video, caption);
    $('remotes').append(figure);
    return figure;
  }

  /** Plays with sound if the browser allows it, else muted with an Unmute button. */
  function play(tile) {
    const video = tile.querySelector('video');
    video.play().catch(() => {
      video.muted = true;
      tile.querySelector('.unmute').hidden = false;
      video.play().catch(() => {});
    });
  }

  async function subscribe(participantId) {
    const pc = new RTCPeerConnection({ bundlePolicy: 'max-bundle', rtcpMuxPolicy: 'require' });
    pc.addTransceiver('audio', { direction: 'recvonly' });
    pc.addTransceiver('video', { direction: 'recvonly' });
    const sub = { pc, location: null, tile: createTile(participantId) };
    subscriptions.set(participantId, sub);
    state.remotes[participantId] = {
      userId: userIdOf(participantId),
      connectionState: 'new',
      framesDecoded: 0,
      audioPacketsReceived: 0,
    };

    const stream = new MediaStream();
    const video = sub.tile.querySelector('video');
    pc.addEventListener('track', (event) => {
      stream.addTrack(event.track);
      video.srcObject = stream;
      play(sub.tile);
    });
    pc.addEventListener('connectionstatechange', () => {
      if (subscriptions.get(participantId) !== sub) return;
      state.remotes[participantId].connectionState = pc.connectionState;
      sub.tile.dataset.state = pc.connectionState;
      if (pc.connectionState === 'connected') failures.delete(participantId);
      if (pc.connectionState === 'failed') {
        failures.set(participantId, (failures.get(participantId) || 0) + 1);
        setStatus(`The connection to ${userIdOf(participantId)} failed; retrying…`);
        unsubscribe(participantId);
        setTimeout(reconcile, RETRY_DELAY_MS);
      }
    });

    try {
      sub.location = await negotiate(pc, `${claims.whip_url}/subscribe/${encodeURIComponent(participantId)}`);
      // Dropped while negotiating (the publisher left, or we did): end it on the server too.
      if (subscriptions.get(participantId) !== sub) deleteSession(sub.location);
    } catch (e) {
      if (subscriptions.get(participantId) !== sub) return;
      unsubscribe(participantId);
      // A refusal (401/403) will not change by retrying; a publisher that just
      // left (404) or a transient failure may.
      const count = e.status === 401 || e.status === 403 ? MAX_FAILURES : (failures.get(participantId) || 0) + 1;
      failures.set(participantId, count);
      if (count >= MAX_FAILURES) {
        showError(`Could not subscribe to ${userIdOf(participantId)}: ${e.message}`);
      } else {
        setTimeout(reconcile, RETRY_DELAY_MS);
      }
    }
  }

  /** Closes a subscription and removes its tile. */
  function unsubscribe(participantId) {
    const sub = subscriptions.get(participantId);
    if (!sub) return;
    subscriptions.delete(participantId);
    sub.pc.close();
    deleteSession(sub.location);
    sub.tile.remove();
    delete state.remotes[participantId];
  }

  /** Subscribes to every other publisher and drops those who stopped. */
  function reconcile() {
    if (leaving || !state.canSubscribe) return;
    const publishing = new Set(
      state.participants.filter((p) => p.isPublishing && p.id !== state.participantId).map((p) => p.id),
    );
    for (const id of [...subscriptions.keys()]) {
      if (!publishing.has(id)) unsubscribe(id);
    }
    for (const id of [...failures.keys()]) {
      if (!publishing.has(id)) failures.delete(id); // a fresh start when they publish again
    }
    for (const id of publishing) {
      if (!subscriptions.has(id) && (failures.get(id) || 0) < MAX_FAILURES) subscribe(id);
    }
  }

  // --- the stage's events -----------------------------------------------------------------

  function renderParticipants() {
    const list = $('participants');
    list.replaceChildren();
    for (const p of state.participants) {
      const item = document.createElement('li');
      item.dataset.participantId = p.id;
      item.dataset.publishing = String(Boolean(p.isPublishing));
      const name = document.createElement('span');
      name.className = 'user-id';
      name.textContent = p.userId || p.id;
      item.append(name);
      const notes = [];
      if (p.id === state.participantId) notes.push('you');
      if (p.isPublishing) notes.push('publishing');
      if (notes.length) {
        const small = document.createElement('small');
        small.textContent = ` (${notes.join(', ')})`;
        item.append(small);
      }
      item.title = `participant ${p.id}`;
      list.append(item);
    }
    $('participant-count').textContent = String(state.participants.length);
    for (const [id, remote] of Object.entries(state.remotes)) {
      remote.userId = userIdOf(id);
      const label = subscriptions.get(id)?.tile?.querySelector('.user-id');
      if (label) label.textContent = remote.userId;
    }
  }

  function connectEvents() {
    let ws;
    try {
      const query = `error_over_ws=1&topic=${encodeURIComponent(claims.topic)}/publishers&traceid=${Date.now().toString(36)}`;
      ws = new WebSocket(`${claims.events_url}?${query}`, token);
    } catch (e) {
      showError(`Could not open the stage events connection: ${e.message}`);
      return;
    }
    socket = ws;
    let opened = false;
    let pinger = null;
    let lastSequence = 0; // per socket: a STAGE_STATE not numbered above it is stale
    ws.addEventListener('open', () => {
      opened = true;
      socketFailures = 0;
      state.eventsConnected = true;
      pinger = setInterval(() => ws.send(JSON.stringify({ type: 'PING' })), PING_INTERVAL_MS);
    });
    ws.addEventListener('message', (event) => {
      let message;
      try {
        message = JSON.parse(event.data);
      } catch {
        return;
      }
      if (message.type === 'aws:ivs:JOIN_ERROR' || message.type === 'aws:ivs:DISCONNECT') {
        state.serverMessages.push(message);
        return;
      }
      if (message.type === 'STAGE_STATE' && message.payload) {
        const sequence = Number(message.payload.sequenceNumber);
        if (!(sequence > lastSequence)) return;
        lastSequence = sequence;
        state.participants = Array.isArray(message.payload.participants) ? message.payload.participants : [];
        renderParticipants();
        reconcile();
      }
    });
    ws.addEventListener('close', (event) => {
      clearInterval(pinger);
      state.eventsConnected = false;
      if (socket !== ws || leaving) return;
      socketFailures += 1;
      if (!opened && socketFailures >= MAX_FAILURES) {
        showError('The stage events connection was refused (is the token expired, revoked, or for a deleted stage?).');
        return;
      }
      const final = FINAL_CLOSE_CODES[event.code];
      if (final) {
        showError(event.reason ? `${final}: ${event.reason}` : final);
        endSession('You are no longer on the stage.');
        return;
      }
      const delay = Math.min(30_000, 1_000 * 2 ** socketFailures);
      setStatus(`Stage events disconnected (code ${event.code}); reconnecting…`);
      setTimeout(() => !leaving && connectEvents(), delay);
    });
  }

  // --- statistics -----------------------------------------------------------------------

  async function collectStats() {
    for (const [id, sub] of subscriptions) {
      if (!state.remotes[id]) continue;
      try {
        const report = await sub.pc.getStats();
        for (const s of report.values()) {
          if (s.type !== 'inbound-rtp') continue;
          if (s.kind === 'video') state.remotes[id].framesDecoded = s.framesDecoded || 0;
          if (s.kind === 'audio') state.remotes[id].audioPacketsReceived = s.packetsReceived || 0;
        }
        sub.tile.dataset.framesDecoded = String(state.remotes[id].framesDecoded);
      } catch {
        // The connection closed while we were asking.
      }
    }
    if (publisher) {
      try {
        const report = await publisher.pc.getStats();
        for (const s of report.values()) {
          if (s.type === 'outbound-rtp' && s.kind === 'video') state.framesEncoded = s.framesEncoded || 0;
        }
      } catch {
        // Closed.
      }
    }
  }

  // --- join and leave ---------------------------------------------------------------------

  function leave() {
    if (leaving) return;
    leaving = true;
    if (publisher) {
      publisher.pc.close();
      deleteSession(publisher.location);
      publisher = null;
    }
    for (const id of [...subscriptions.keys()]) unsubscribe(id);
    if (socket) socket.close(1000, 'leaving');
    if (localStream) localStream.getTracks().forEach((t) => t.stop());
    state.published = false;
    state.status = 'left';
  }

  function endSession(message) {
    leave();
    setStatus(message);
    $('leave').hidden = true;
  }

  async function join() {
    const params = new URLSearchParams(location.search);
    token = (params.get('token') || '').trim();
    if (!token) {
      $('token-form').hidden = false;
      setStatus('Paste a participant token to join a stage.');
      return;
    }
    try {
      claims = decodeClaims(token);
    } catch (e) {
      $('token-form').hidden = false;
      $('token-input').value = token;
      setStatus('');
      showError(`This is not a participant token: ${e.message}`);
      state.status = 'error';
      return;
    }
    const caps = claims.capabilities || {};
    Object.assign(state, {
      status: 'joining',
      stageId: claims.topic,
      participantId: claims.jti,
      userId: claims.user_id || claims.jti,
      canPublish: caps.allow_publish === true,
      canSubscribe: caps.allow_subscribe === true,
    });
    $('stage-id').textContent = state.stageId;
    $('self-user').textContent = state.userId;
    $('local-user').textContent = state.userId;
    $('stage-line').hidden = false;
    $('stage').hidden = false;
    $('leave').hidden = false;
    if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) {
      showError(`This token expired at ${new Date(claims.exp * 1000).toISOString()}; the server will refuse it.`);
    }

    $('leave').addEventListener('click', () => endSession('You left the stage. Reload the page to join again.'));
    window.addEventListener('pagehide', leave);
    // The server's Content-Security-Policy allows connections to this page's own
    // origin only: a token whose endpoints name another host (say 127.0.0.1 while
    // the page was opened at localhost) is blocked before any request is sent.
    document.addEventListener('securitypolicyviolation', (event) => {
      const endpoint = new URL(claims.whip_url);
      showError(`The browser blocked a connection to ${event.blockedURI}: open this page at ${endpoint.origin}/join instead.`);
    });
    setInterval(collectStats, STATS_INTERVAL_MS);

    connectEvents();
    if (state.canPublish) {
      try {
        await publish();
      } catch (e) {
        showError(`Could not publish: ${e.message}`);
      }
    } else {
      setStatus(state.canSubscribe ? 'Watching (this token does not allow publishing).' : 'This token allows neither publishing nor subscribing.');
    }
    state.status = leaving ? 'left' : 'joined';
    if (!state.errors.length) clearError();
  }

  join().catch((e) => {
    state.status = 'error';
    showError(e.message);
  });
})();
