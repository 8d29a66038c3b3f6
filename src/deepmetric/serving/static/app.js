// deepmetric search page: plain JavaScript, no library, every request to this server (no CDN).
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  };
  const state = { info: null, file: null, name: "", thumbnails: false, previewUrl: null, busy: false };

  // What the API's 4xx error codes mean, in plain words (the API's own message follows as the detail).
  const PLAIN = {
    not_an_image: "That file is not an image the server can read.",
    truncated_image: "That image file is cut short (truncated), so it cannot be decoded.",
    corrupt_image: "That image file is damaged and cannot be decoded.",
    image_too_large: "That image has too many pixels for this server.",
    upload_too_large: "That file is too large to upload to this server.",
    too_many_images: "Too many images in one request.",
    invalid_k: "The number of neighbours is out of range.",
    invalid_fmr: "That operating point (false-match rate) is not one this model was calibrated for.",
    no_image: "No image was sent.",
    not_multipart: "The image was not sent as a file upload.",
    bad_multipart: "The upload was malformed.",
  };

  function showError(headline, detail) {
    const box = $("error");
    box.replaceChildren(el("strong", "", headline));
    if (detail) box.append(el("span", "", detail));
    box.hidden = false;
  }
  function clearError() { $("error").hidden = true; $("error").replaceChildren(); }

  function fmtInt(n) { return Number(n).toLocaleString("en-US"); }
  // folder-style class names ("001.Black_footed_Albatross") read and wrap better with spaces
  function label(name) { return String(name).replace(/_/g, " "); }

  async function loadInfo() {
    try {
      const r = await fetch("/v1/info");
      const info = await r.json();
      state.info = info;
      state.thumbnails = Boolean(info.thumbnails);
      const acc = info.accepted_on || {};
      const parts = [
        `model ${info.model_version}` + (info.method ? ` (${info.method}` + (info.model_precision ? `, ${info.model_precision}` : "") + ")" : ""),
        `gallery of ${fmtInt(info.gallery_size)} images` + (info.dataset ? ` (${info.dataset})` : ""),
        `index ${info.index_factory}`,
      ];
      if (typeof acc["map@r"] === "number") parts.push(`MAP@R ${(100 * acc["map@r"]).toFixed(1)}`);
      if (typeof acc["recall@1"] === "number") parts.push(`Recall@1 ${(100 * acc["recall@1"]).toFixed(1)}`);
      if (info.release) parts.unshift(`release ${info.release}`);
      $("model-info").textContent = parts.join(" · ");
      const k = $("k");
      k.max = String(info.gallery_size);
      const def = info.limits && info.limits.default_k;
      k.value = String(Math.min(def || 10, info.gallery_size));
      showOperatingPoints(info.match);
      if (state.thumbnails) loadExamples();
    } catch (e) {
      $("model-info").textContent = "Could not read the bundle information (/v1/info).";
    }
  }

  function pct(fmr) { return `${+(100 * fmr).toPrecision(3)}%`; }

  // The bundle's match operating points (/v1/info `match`); none (an old bundle): no selector, no verdict.
  function showOperatingPoints(match) {
    const points = (match && match.operating_points) || [];
    const select = $("fmr");
    select.replaceChildren();
    for (const p of points) {
      const o = el("option", "", `${pct(p.fmr)} (similarity ≥ ${Number(p.threshold).toFixed(3)})`);
      o.value = String(p.fmr);
      o.selected = p.fmr === match.default_fmr;
      select.append(o);
    }
    $("fmr-row").hidden = points.length === 0;
  }

  async function loadExamples() {
    try {
      const r = await fetch("/v1/examples?n=8");
      if (!r.ok) return;
      const body = await r.json();
      const list = $("examples");
      list.replaceChildren();
      for (const ex of body.examples) {
        const li = el("li");
        const b = el("button", "example");
        b.type = "button";
        b.setAttribute("aria-label", `Search with gallery image ${ex.id} (${ex.class_name})`);
        const img = el("img");
        img.src = `/v1/thumbnails/${ex.id}`;
        img.alt = "";
        b.append(img, el("span", "", label(ex.class_name)));
        b.addEventListener("click", () => useExample(ex));
        li.append(b);
        list.append(li);
      }
      $("examples-section").hidden = body.examples.length === 0;
    } catch (e) { /* examples are optional */ }
  }

  async function useExample(ex) {
    const r = await fetch(`/v1/thumbnails/${ex.id}`);
    if (!r.ok) { showError("Could not load that example.", `HTTP ${r.status}`); return; }
    const blob = await r.blob();
    setQuery(blob, `gallery #${ex.id} (${ex.class_name}, thumbnail)`);
  }

  function setQuery(blob, name) {
    state.file = blob;
    state.name = name;
    if (state.previewUrl) URL.revokeObjectURL(state.previewUrl);
    state.previewUrl = URL.createObjectURL(blob);
    $("query-img").src = state.previewUrl;
    $("query-img").alt = `Query image: ${name}`;
    $("query-name").textContent = name;
    $("query-preview").hidden = false;
    $("search-btn").disabled = false;
    search();
  }

  function kValue() {
    const k = Number.parseInt($("k").value, 10);
    return Number.isFinite(k) ? k : $("k").value;
  }

  async function search() {
    if (!state.file || state.busy) return;
    clearError();
    state.busy = true;
    $("search-btn").disabled = true;
    $("status").textContent = "Searching…";
    const form = new FormData();
    form.append("image", state.file, state.name.replace(/[^\w.\- #()]/g, "_") || "query");
    const k = kValue();
    const t0 = performance.now();
    try {
      const fmr = $("fmr-row").hidden ? "" : `&fmr=${encodeURIComponent($("fmr").value)}`;
      const r = await fetch(`/v1/search?k=${encodeURIComponent(k)}${fmr}`, { method: "POST", body: form });
      let body = null;
      try { body = await r.json(); } catch (e) { body = null; }
      if (!r.ok) {
        const code = body && body.error;
        showError(PLAIN[code] || `The server refused the request (HTTP ${r.status}).`, body && body.message);
        $("grid").replaceChildren();
        $("verdict").hidden = true;
        $("status").textContent = "No results.";
        return;
      }
      const ms = Math.round(performance.now() - t0);
      render(body.results[0].neighbors, ms, body.operating_point);
    } catch (e) {
      showError("Could not reach the server.", String(e));
      $("status").textContent = "No results.";
    } finally {
      state.busy = false;
      $("search-btn").disabled = !state.file;
    }
  }

  // "Is it the same item?": how many neighbours pass the operating point's threshold, or none.
  function showVerdict(neighbors, point) {
    const v = $("verdict");
    if (!point) { v.hidden = true; return; }
    const n = neighbors.filter((x) => x.match).length;
    const at = `similarity ≥ ${Number(point.threshold).toFixed(3)} at a false-match rate of ${pct(point.fmr)}`;
    v.className = n ? "verdict found" : "verdict none";
    v.textContent = n ? `${n} of ${neighbors.length} neighbours match (${at}).` : `No match in the gallery (no neighbour has ${at}).`;
    v.hidden = false;
  }

  function render(neighbors, ms, point) {
    const grid = $("grid");
    grid.replaceChildren();
    showVerdict(neighbors, point);
    neighbors.forEach((n, i) => {
      const li = el("li", n.match ? "hit match" : "hit");
      li.dataset.id = String(n.id);
      li.dataset.label = String(n.label);
      if (typeof n.match === "boolean") li.dataset.match = String(n.match);
      const fig = el("figure");
      const thumb = el("div", "thumb");
      if (state.thumbnails) {
        const img = el("img");
        img.src = `/v1/thumbnails/${n.id}`;
        img.alt = `${n.class_name}, gallery image ${n.id}`;
        img.loading = "lazy";
        img.addEventListener("error", () => { thumb.classList.add("noimg"); thumb.replaceChildren(el("span", "", `#${n.id}`)); });
        thumb.append(img);
      } else {
        thumb.classList.add("noimg");
        thumb.append(el("span", "", `#${n.id}`));
      }
      const cap = el("figcaption");
      const cls = el("span", "cls", label(n.class_name));
      cls.title = `${n.class_name} (label ${n.label})\n${n.path}`;
      const meta = el("span", "meta");
      meta.append(el("span", "rank", `${i + 1}. id ${n.id}`), el("span", "score", n.score.toFixed(3)));
      meta.title = "cosine similarity to the query";
      const bar = el("div", "bar");
      const fill = el("span");
      fill.style.width = `${Math.max(0, Math.min(1, n.score)) * 100}%`;
      bar.append(fill);
      cap.append(cls, meta, bar);
      if (n.match) cap.append(el("span", "badge", "match"));
      fig.append(thumb, cap);
      li.append(fig);
      grid.append(li);
    });
    // on a narrow screen the results sit below the query: bring them into view
    if (window.matchMedia("(max-width: 760px)").matches) $("results").scrollIntoView({ block: "start" });
    const total = state.info ? fmtInt(state.info.gallery_size) : "?";
    $("status").textContent = `Top ${neighbors.length} of ${total} gallery images for “${state.name}” (${ms} ms).`;
  }

  function firstImage(items) {
    for (const it of items || []) {
      if (it.kind === "file") {
        const f = it.getAsFile();
        if (f) return f;
      }
    }
    return null;
  }

  function wire() {
    const file = $("file");
    $("choose").addEventListener("click", () => file.click());
    file.addEventListener("change", () => {
      if (file.files && file.files[0]) setQuery(file.files[0], file.files[0].name);
      file.value = "";
    });
    const drop = $("drop");
    ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
    ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
    drop.addEventListener("drop", (e) => {
      e.preventDefault();
      const f = e.dataTransfer && e.dataTransfer.files && e.dataTransfer.files[0];
      if (f) setQuery(f, f.name);
    });
    // a drop outside the zone must not navigate away from the page
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    document.addEventListener("paste", (e) => {
      const f = firstImage(e.clipboardData && e.clipboardData.items);
      if (f) { e.preventDefault(); setQuery(f, f.name || "pasted image"); }
    });
    $("search-form").addEventListener("submit", (e) => { e.preventDefault(); search(); });
    $("k").addEventListener("change", () => search());
    $("fmr").addEventListener("change", () => search());
  }

  wire();
  loadInfo();
})();
