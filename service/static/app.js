// The tagging page: choose or drop audio files, upload them (progress, cancel), draw each result:
// top tags as bars, a class x time heat map linked to an <audio> player, downloads as JSON and CSV.
// Plain DOM code, no build step. The optional API key lives in sessionStorage.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const form = $("tag-form");
  const fileInput = $("file-input");
  const dropZone = $("drop-zone");
  const submit = $("submit");
  const cancel = $("cancel");
  const statusLine = $("status");
  const errorBox = $("error");
  const modelSelect = $("model-select");
  const apiKeyInput = $("api-key");
  const resultsBox = $("results");
  const template = $("result-template");
  const ROW_PX = 20; // height of one heat map row

  const state = {
    files: [], // the File objects chosen
    ready: false, // the server answered /v1/models
    limits: null, // GET /v1/limits
    xhr: null, // the upload in progress
    urls: [], // object URLs of the players, revoked with their results
  };

  // --- formatting ----------------------------------------------------------------------------------
  function humanSize(bytes) {
    const units = ["bytes", "KiB", "MiB", "GiB"];
    let size = bytes;
    let unit = 0;
    while (size >= 1024 && unit < units.length - 1) { size /= 1024; unit += 1; }
    if (unit === 0) return bytes + " bytes";
    return (Number.isInteger(size) ? size : size.toFixed(1)) + " " + units[unit];
  }

  function clock(seconds, decimals) {
    const m = Math.floor(seconds / 60);
    const s = seconds - m * 60;
    const text = decimals ? s.toFixed(decimals).padStart(3 + decimals, "0") : String(Math.floor(s)).padStart(2, "0");
    return m + ":" + text;
  }

  function humanDuration(seconds) {
    return seconds < 60 ? seconds.toFixed(1) + " s" : clock(seconds);
  }

  function plural(n, word) { return n + " " + word + (n === 1 ? "" : "s"); }

  // --- the API key, status and errors -------------------------------------------------------------------
  apiKeyInput.value = sessionStorage.getItem("audio_dcls_api_key") || "";
  if (apiKeyInput.value) $("api-key-label").hidden = false;
  apiKeyInput.addEventListener("change", () => {
    sessionStorage.setItem("audio_dcls_api_key", apiKeyInput.value.trim());
    connect();
  });

  function apiKey() { return apiKeyInput.value.trim(); }
  function authHeaders() { return apiKey() ? { Authorization: "Bearer " + apiKey() } : {}; }

  function setStatus(text, kind) {
    statusLine.textContent = text;
    statusLine.dataset.state = kind;
  }

  function showError(message) {
    errorBox.textContent = message || "";
    errorBox.hidden = !message;
  }

  function keyProblem() {
    $("api-key-label").hidden = false;
    if (apiKey()) return "The API key is wrong: the server does not accept it. Check it and enter it again.";
    return "This server needs an API key: enter it in the API key field.";
  }

  function describeError(status, body) {
    if (status === 401) return keyProblem();
    if (body && body.error) return body.error.message + " (" + status + " " + body.error.code + ")";
    return "the server answered HTTP " + status;
  }

  async function getJSON(path) {
    const r = await fetch(path, { headers: authHeaders() });
    let body = null;
    try { body = await r.json(); } catch (e) { /* not JSON */ }
    return { status: r.status, ok: r.ok, body: body };
  }

  // --- start-up: models, limits, what the model knows ----------------------------------------------------
  async function connect() {
    state.ready = false;
    updateSubmit();
    try {
      const r = await getJSON("/v1/models");
      if (r.status === 401) {
        setStatus(keyProblem(), "error");
      } else if (r.status === 503) {
        setStatus("the server is loading its models…", "loading");
        setTimeout(connect, 2000);
      } else if (!r.ok) {
        setStatus(describeError(r.status, r.body), "error");
      } else {
        fillModels(r.body);
        setStatus("ready — " + plural(r.body.models.length, "model"), "ready");
        state.ready = r.body.models.length > 0;
        await Promise.all([loadLimits(), loadModelInfo()]);
      }
    } catch (e) {
      setStatus("cannot reach the server: " + e.message, "error");
      setTimeout(connect, 3000);
    }
    updateSubmit();
  }

  function fillModels(listing) {
    const chosen = modelSelect.value;
    modelSelect.replaceChildren();
    for (const m of listing.models) {
      const opt = document.createElement("option");
      opt.value = m.name;
      opt.textContent = m.name + " (" + m.arch + ")";
      opt.selected = chosen ? m.name === chosen : m.name === listing.default;
      modelSelect.appendChild(opt);
    }
  }

  async function loadLimits() {
    const r = await getJSON("/v1/limits");
    if (!r.ok) return;
    state.limits = r.body;
    const l = r.body;
    $("limits").textContent = "The server takes files up to " + humanSize(l.max_upload_bytes) + ", " + l.max_batch_files +
      " files per request, audio up to " + humanDuration(l.max_audio_seconds) + " and " + l.max_windows + " windows per file.";
    if (state.files.length) chooseFiles(state.files);
  }

  async function loadModelInfo() {
    const name = modelSelect.value;
    if (!name) return;
    const link = $("labels-link");
    link.href = "/v1/labels?model=" + encodeURIComponent(name);
    const r = await getJSON("/v1/models/" + encodeURIComponent(name));
    if (!r.ok) return;
    const d = r.body;
    $("model-summary").textContent = name + " (" + d.arch + ") knows " + plural(d.num_classes, "label") + " (" + d.label_source + ").";
    const title = $("model-classes-title");
    const list = $("model-classes");
    list.replaceChildren();
    if (d.populated_classes) {
      title.textContent = "Its training data had positive clips for " + d.populated_classes.length + " of them:";
      for (const i of d.populated_classes) {
        const li = document.createElement("li");
        li.textContent = d.labels[i].name;
        list.appendChild(li);
      }
    } else {
      title.textContent = "The release does not record which classes its training data populated.";
    }
    title.hidden = false;
    list.hidden = !d.populated_classes;
  }

  modelSelect.addEventListener("change", loadModelInfo);

  $("labels-link").addEventListener("click", async (e) => {
    if (!apiKey()) return; // a plain link works without a key
    e.preventDefault();
    const r = await getJSON(e.currentTarget.getAttribute("href"));
    if (!r.ok) { showError(describeError(r.status, r.body)); return; }
    download("labels-" + modelSelect.value + ".json", JSON.stringify(r.body, null, 1), "application/json");
  });

  // --- choosing files --------------------------------------------------------------------------------------
  function limitProblem(files) {
    const l = state.limits;
    if (!l || !files.length) return null;
    if (files.length > l.max_batch_files) {
      return plural(files.length, "file") + " chosen; the server takes at most " + l.max_batch_files + " per request.";
    }
    const big = files.filter((f) => f.size > l.max_upload_bytes);
    if (big.length) {
      return big.map((f) => f.name + " is " + humanSize(f.size)).join(", ") + "; the server takes files up to " +
        humanSize(l.max_upload_bytes) + ". Nothing was uploaded.";
    }
    const total = files.reduce((sum, f) => sum + f.size, 0);
    const route = files.length > 1 ? "/v1/tag/batch" : "/v1/tag";
    if (l.body_limits[route] && total > l.body_limits[route]) {
      return "the files add up to " + humanSize(total) + ", over the " + humanSize(l.body_limits[route]) + " a request may carry.";
    }
    return null;
  }

  function chooseFiles(files) {
    state.files = Array.from(files || []);
    const names = state.files.map((f) => f.name + " (" + humanSize(f.size) + ")");
    $("file-name").textContent = state.files.length > 1 ? plural(state.files.length, "file") + ": " + names.join(", ") : names.join("");
    showError(limitProblem(state.files));
    updateSubmit();
  }

  function updateSubmit() {
    submit.disabled = !(state.ready && state.files.length && !state.xhr);
  }

  fileInput.addEventListener("change", () => chooseFiles(fileInput.files));
  dropZone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); fileInput.click(); }
  });
  // A drop anywhere on the page is ours: the browser never navigates away to the file.
  for (const ev of ["dragenter", "dragover"]) {
    window.addEventListener(ev, (e) => { e.preventDefault(); dropZone.classList.add("dragover"); });
  }
  window.addEventListener("dragleave", (e) => {
    if (!e.relatedTarget) dropZone.classList.remove("dragover");
  });
  window.addEventListener("drop", (e) => {
    e.preventDefault();
    dropZone.classList.remove("dragover");
    if (e.dataTransfer && e.dataTransfer.files.length) chooseFiles(e.dataTransfer.files);
  });

  // --- the request -------------------------------------------------------------------------------------------
  function formData(files) {
    const data = new FormData();
    for (const f of files) data.append(files.length > 1 ? "files" : "file", f, f.name);
    if (modelSelect.value) data.append("model", modelSelect.value);
    data.append("top_k", $("top-k").value || "10");
    for (const [id, field] of [["threshold", "threshold"], ["window-s", "window_s"], ["hop-s", "hop_s"]]) {
      const value = $(id).value.trim();
      if (value) data.append(field, value); // empty: the server's default (hop: window / 2)
    }
    return data;
  }

  function upload(files) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      state.xhr = xhr;
      xhr.open("POST", files.length > 1 ? "/v1/tag/batch" : "/v1/tag");
      for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
      const total = files.reduce((sum, f) => sum + f.size, 0);
      xhr.upload.onprogress = (e) => {
        const done = e.lengthComputable ? e.loaded / e.total : 0;
        $("progress").value = Math.round(done * 100);
        $("progress-text").textContent = "uploading " + Math.round(done * 100) + " % (" + humanSize(done * total) + " of " + humanSize(total) + ")";
      };
      xhr.upload.onload = () => {
        $("progress").value = 100;
        $("progress-text").textContent = "uploaded; the server is decoding and tagging…";
        setStatus("tagging…", "loading");
      };
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        resolve({ status: xhr.status, body: body });
      };
      xhr.onerror = () => reject(new Error("the connection failed"));
      xhr.onabort = () => reject(new DOMException("cancelled", "AbortError"));
      xhr.send(formData(files));
    });
  }

  function setBusy(busy) {
    $("progress-row").hidden = !busy;
    cancel.hidden = !busy;
    submit.textContent = busy ? "Tagging…" : "Tag";
    resultsBox.setAttribute("aria-busy", busy ? "true" : "false");
    if (!busy) state.xhr = null;
    updateSubmit();
  }

  cancel.addEventListener("click", () => { if (state.xhr) state.xhr.abort(); });

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const files = state.files;
    if (!files.length) return;
    const problem = limitProblem(files);
    if (problem) { clearResults(); showError(problem); return; }
    showError("");
    resultsBox.classList.add("stale"); // the old results stay visible, dimmed, until the new ones replace them
    $("progress").value = 0;
    setStatus("uploading " + plural(files.length, "file") + "…", "loading");
    setBusy(true);
    const started = performance.now();
    try {
      const r = await upload(files);
      if (r.status !== 200) {
        clearResults();
        showError(describeError(r.status, r.body));
        setStatus("the server refused the request", "error");
      } else {
        const entries = files.length > 1 ? r.body.results : [{ filename: r.body.filename, status: 200, result: r.body }];
        showResults(entries, files);
        const seconds = ((performance.now() - started) / 1000).toFixed(1);
        setStatus("tagged " + plural(files.length, "file") + " in " + seconds + " s", "ready");
      }
    } catch (err) {
      clearResults();
      if (err.name === "AbortError") {
        setStatus("upload cancelled", "ready");
      } else {
        showError("the request failed: " + err.message);
        setStatus("the request failed", "error");
      }
    } finally {
      setBusy(false);
    }
  });

  // --- results -------------------------------------------------------------------------------------------------
  function clearResults() {
    for (const url of state.urls) URL.revokeObjectURL(url);
    state.urls = [];
    resultsBox.replaceChildren();
    resultsBox.classList.remove("stale");
  }

  function showResults(entries, files) {
    clearResults();
    entries.forEach((entry, i) => resultsBox.appendChild(renderEntry(entry, files[i])));
    for (const article of resultsBox.querySelectorAll(".result")) article.drawHeatmap && article.drawHeatmap();
  }

  function renderEntry(entry, file) {
    const article = template.content.firstElementChild.cloneNode(true);
    article.querySelector(".result-title").textContent = entry.filename || (file && file.name) || "upload";
    if (entry.status !== 200) {
      article.classList.add("failed");
      for (const el of article.querySelectorAll("h3, .hint, .heatmap, .legend, .player, .tags, .downloads")) el.remove();
      article.querySelector(".summary").textContent = describeError(entry.status, { error: entry.error });
      article.querySelector(".summary").classList.add("error");
      return article;
    }
    const result = entry.result;
    result.filename = entry.filename;
    article.querySelector(".summary").textContent =
      humanDuration(result.duration_s) + ", " + plural(result.num_windows, "window") + " of " + result.window_s + " s every " +
      result.hop_s + " s, model " + result.model + ", " + Math.round(result.timing.total_ms) + " ms on the server";
    const warnings = article.querySelector(".warnings");
    for (const w of result.warnings || []) {
      const li = document.createElement("li");
      li.textContent = "The file is not whole, but was tagged: " + w;
      warnings.appendChild(li);
    }
    warnings.hidden = !(result.warnings && result.warnings.length);
    const tags = article.querySelector(".tags");
    tags.replaceChildren(...result.tags.map(tagRow));
    if (!result.tags.length) tags.replaceChildren(note("no tag scores at least the threshold"));
    const player = article.querySelector(".player");
    if (file) {
      const url = URL.createObjectURL(file);
      state.urls.push(url);
      player.src = url;
    }
    setUpHeatmap(article, result, player);
    article.querySelector(".download-json").addEventListener("click", () => download(baseName(result) + ".tags.json", JSON.stringify(result, null, 1), "application/json"));
    article.querySelector(".download-csv").addEventListener("click", () => download(baseName(result) + ".tags.csv", resultCSV(result), "text/csv"));
    return article;
  }

  function note(text) {
    const li = document.createElement("li");
    li.className = "hint";
    li.textContent = text;
    return li;
  }

  function tagRow(tag) {
    const row = document.createElement("li");
    row.className = "tag";
    row.dataset.mid = tag.mid;
    row.dataset.score = String(tag.score);
    const name = document.createElement("span");
    name.className = "tag-name";
    name.textContent = tag.name;
    name.title = tag.name + (tag.mid ? " " + tag.mid : "");
    const track = document.createElement("div");
    track.className = "bar-track";
    const bar = document.createElement("div");
    bar.className = "bar";
    bar.style.width = (Math.max(0, Math.min(1, tag.score)) * 100).toFixed(1) + "%";
    track.appendChild(bar);
    const score = document.createElement("span");
    score.className = "tag-score";
    score.textContent = tag.score.toFixed(3);
    row.append(name, track, score);
    return row;
  }

  // --- the heat map: rows = the clip's top tags, columns = windows, linked to the player -----------------------------
  function scoreColour(score) {
    const s = Math.max(0, Math.min(1, score));
    return "hsl(221, 83%, " + (97 - 72 * s).toFixed(2) + "%)"; // one hue, darker for higher scores
  }

  function columnEdges(result) {
    // Window i is drawn from its start to the next window's start (the last to the end of the audio).
    const d = result.duration_s;
    return result.windows.map((w, i) => [w.start_s / d, (i + 1 < result.windows.length ? result.windows[i + 1].start_s : d) / d]);
  }

  function niceStep(duration, ticks) {
    const steps = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600];
    return steps.find((s) => duration / s <= ticks) || steps[steps.length - 1];
  }

  function setUpHeatmap(article, result, player) {
    const plot = article.querySelector(".heatmap-plot");
    const canvas = article.querySelector(".heatmap-canvas");
    const labels = article.querySelector(".heatmap-labels");
    const tip = article.querySelector(".heatmap-tip");
    const axis = article.querySelector(".heatmap-axis");
    const playhead = article.querySelector(".playhead");
    const rows = result.tags;
    const edges = columnEdges(result);
    canvas.dataset.columns = String(result.windows.length);
    canvas.dataset.rows = String(rows.length);
    canvas.tabIndex = 0;
    canvas.setAttribute("aria-label", "heat map of the top " + rows.length + " tags over " + result.windows.length + " windows; arrow keys move the player by one window");
    labels.replaceChildren(...rows.map((t) => {
      const el = document.createElement("div");
      el.className = "heatmap-label";
      el.textContent = t.name;
      el.title = t.name;
      return el;
    }));
    canvas.style.height = rows.length * ROW_PX + "px";
    if (!rows.length) { article.querySelector(".heatmap").hidden = true; return; }

    article.drawHeatmap = () => {
      const width = plot.clientWidth;
      const dpr = window.devicePixelRatio || 1;
      canvas.width = Math.max(1, Math.round(width * dpr));
      canvas.height = Math.round(rows.length * ROW_PX * dpr);
      const ctx = canvas.getContext("2d");
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      result.windows.forEach((w, i) => {
        const x0 = Math.floor(edges[i][0] * width);
        const x1 = Math.ceil(edges[i][1] * width);
        w.tag_scores.forEach((s, r) => {
          ctx.fillStyle = scoreColour(s);
          ctx.fillRect(x0, r * ROW_PX, Math.max(1, x1 - x0), ROW_PX - 1);
        });
      });
      drawAxis(axis, result.duration_s, width);
    };
    new ResizeObserver(() => article.drawHeatmap()).observe(plot);

    function cellAt(clientX, clientY) {
      const box = canvas.getBoundingClientRect();
      const fx = Math.min(Math.max((clientX - box.left) / box.width, 0), 0.999999);
      const row = Math.min(rows.length - 1, Math.max(0, Math.floor((clientY - box.top) / ROW_PX)));
      const col = Math.max(0, edges.findIndex((e) => fx >= e[0] && fx < e[1]));
      return { fx: fx, row: row, col: col, x: clientX - box.left, y: clientY - box.top };
    }

    function showTip(cell) {
      const w = result.windows[cell.col];
      const t = rows[cell.row];
      tip.textContent = t.name + ": " + w.tag_scores[cell.row].toFixed(3) + " at " + clock(w.start_s, 1) + "–" + clock(w.end_s, 1);
      tip.hidden = false;
      const left = Math.min(Math.max(cell.x + 12, 0), plot.clientWidth - tip.offsetWidth);
      tip.style.left = Math.max(0, left) + "px";
      tip.style.top = (cell.y + 14) + "px";
    }

    function seek(seconds) {
      const t = Math.max(0, Math.min(seconds, result.duration_s));
      if (player.src) player.currentTime = t;
      movePlayhead(t);
    }

    function movePlayhead(t) {
      playhead.style.left = (100 * t / result.duration_s) + "%";
      playhead.hidden = false;
    }

    canvas.addEventListener("pointermove", (e) => showTip(cellAt(e.clientX, e.clientY)));
    canvas.addEventListener("pointerleave", () => { tip.hidden = true; });
    canvas.addEventListener("click", (e) => {
      const cell = cellAt(e.clientX, e.clientY);
      showTip(cell); // a tap on a phone shows the score too
      seek(cell.fx * result.duration_s);
    });
    canvas.addEventListener("keydown", (e) => {
      if (e.key !== "ArrowLeft" && e.key !== "ArrowRight") return;
      e.preventDefault();
      const now = player.currentTime || 0;
      const col = Math.max(0, edges.findIndex((edge) => now / result.duration_s < edge[1]));
      const next = Math.max(0, Math.min(result.windows.length - 1, col + (e.key === "ArrowRight" ? 1 : -1)));
      seek(result.windows[next].start_s);
    });
    let frame = 0;
    const follow = () => { movePlayhead(player.currentTime); frame = player.paused ? 0 : requestAnimationFrame(follow); };
    player.addEventListener("play", () => { if (!frame) frame = requestAnimationFrame(follow); });
    for (const ev of ["timeupdate", "seeked"]) player.addEventListener(ev, () => movePlayhead(player.currentTime));
    playhead.hidden = true;
  }

  function drawAxis(axis, duration, width) {
    const step = niceStep(duration, Math.max(2, Math.floor(width / 56)));
    axis.replaceChildren();
    for (let t = 0; t <= duration + 1e-9; t += step) {
      const tick = document.createElement("span");
      tick.className = "tick";
      tick.style.left = (100 * t / duration) + "%";
      if (t > 0.92 * duration) tick.style.transform = "translateX(-100%)"; // keep the last label inside the axis
      tick.textContent = clock(t);
      axis.appendChild(tick);
    }
  }

  // --- downloads -----------------------------------------------------------------------------------------------------
  function baseName(result) {
    return (result.filename || "result").replace(/\.[^.]*$/, "") || "result";
  }

  function csvField(value) {
    const text = String(value);
    return /[",\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function resultCSV(result) {
    // Long format: the clip's tags (window "clip"), then each window's score for each of them.
    const lines = [["file", "window", "start_s", "end_s", "index", "mid", "name", "score"].join(",")];
    const row = (window, start, end, tag, score) => lines.push([result.filename, window, start, end, tag.index, tag.mid, tag.name, score].map(csvField).join(","));
    for (const t of result.tags) row("clip", 0, result.duration_s, t, t.score);
    for (const w of result.windows || []) result.tags.forEach((t, j) => row(w.index, w.start_s, w.end_s, t, w.tag_scores[j]));
    return lines.join("\n") + "\n";
  }

  function download(name, text, type) {
    const url = URL.createObjectURL(new Blob([text], { type: type }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  }

  connect();
})();
