// The page of `styleengine serve`: plain JS against the JSON API (no build step).
"use strict";
const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token") || "";
const auth = token ? { Authorization: "Bearer " + token } : {};
const withToken = (url) => (token ? url + (url.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token) : url);
const state = { defaults: null, styles: [], job: null, source: null, previews: 0 };

function fmt(x) {
  if (x === null || x === undefined) return "–";
  return Math.abs(x) >= 1000 || (Math.abs(x) < 0.01 && x !== 0) ? x.toExponential(2) : x.toFixed(3);
}

function thumb(file, img) {
  const url = URL.createObjectURL(file);
  img.src = url;
  img.classList.add("shown");
}

function strengthWeight() {
  // 0..100 -> x0.01..x100 of the server's style weight, logarithmic: 50 is the default
  const factor = Math.pow(10, (Number($("strength").value) - 50) / 25);
  return { factor, weight: state.defaults.style_weight * factor };
}

function renderStyles() {
  const box = $("styles");
  box.innerHTML = "";
  state.styles.forEach((item, i) => {
    const row = document.createElement("div");
    row.className = "style-item";
    const img = document.createElement("img");
    thumb(item.file, img);
    const label = document.createElement("label");
    label.innerHTML = `Blend <output>${item.weight}</output><input type="range" min="0" max="10" step="1" value="${item.weight}">`;
    label.querySelector("input").addEventListener("input", (e) => {
      item.weight = Number(e.target.value);
      label.querySelector("output").textContent = item.weight;
    });
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.title = "Remove";
    remove.addEventListener("click", () => { state.styles.splice(i, 1); renderStyles(); });
    row.append(img, label, remove);
    box.append(row);
  });
}

function setStats(job) {
  $("st-status").textContent = job.status;
  $("st-iter").textContent = `${job.iteration} / ${job.iterations}`;
  $("st-loss").textContent = fmt(job.losses && job.losses.loss);
  $("st-style").textContent = fmt(job.distances && job.distances.style);
  $("st-content").textContent = fmt(job.distances && job.distances.content);
  $("bar").style.width = (job.iterations ? (100 * job.iteration) / job.iterations : 0) + "%";
}

function showPreview(src) {
  $("preview").src = src;
  $("preview").classList.add("shown");
  $("placeholder").style.display = "none";
}

function finish(job) {
  if (state.source) { state.source.close(); state.source = null; }
  $("cancel").disabled = true;
  $("submit").disabled = false;
  if (job.result) {  // done, or failed with its last finite image (the error below says which)
    const url = withToken(`/api/jobs/${job.id}/result`);
    $("download").href = url;
    $("download").setAttribute("download", `styleengine-${job.id}.png`);
    $("download").setAttribute("aria-disabled", "false");
    showPreview(url);
  }
  if (job.status === "done") {
    const done = JSON.parse(sessionStorage.getItem("styleengine-jobs") || "[]");
    done.unshift(job.id);
    sessionStorage.setItem("styleengine-jobs", JSON.stringify(done.slice(0, 48)));
    renderGallery();
  } else if (job.status === "failed") {
    $("error").textContent = job.reason || "the job failed";
  }
}

function follow(id) {
  state.previews = 0;
  $("st-previews").textContent = "0";
  const source = new EventSource(withToken(`/api/jobs/${id}/events`));
  state.source = source;
  source.addEventListener("status", (e) => {
    const job = JSON.parse(e.data);
    setStats(job);
    if (["done", "failed", "cancelled"].includes(job.status)) finish(job);
  });
  source.addEventListener("preview", (e) => {
    const p = JSON.parse(e.data);
    state.previews += 1;
    $("st-previews").textContent = String(state.previews);
    $("canvas").dataset.previews = String(state.previews);
    showPreview(p.image);
  });
  source.onerror = () => { if (state.source === source && source.readyState === EventSource.CLOSED) finish({ status: "failed" }); };
}

async function submit(event) {
  event.preventDefault();
  $("error").textContent = "";
  const content = $("content").files[0];
  if (!content) { $("error").textContent = "Choose a content photo."; return; }
  if (!state.styles.length) { $("error").textContent = "Add at least one style image."; return; }
  const form = new FormData();
  form.append("content", content);
  state.styles.forEach((s) => form.append("style", s.file));
  if (state.styles.length > 1) form.append("style_blend", state.styles.map((s) => s.weight).join(","));
  form.append("size", $("size").value);
  form.append("iters", $("iters").value);
  form.append("style_weight", String(strengthWeight().weight));
  form.append("preserve_colors", $("preserve_colors").checked ? "true" : "false");
  $("submit").disabled = true;
  $("download").setAttribute("aria-disabled", "true");
  const response = await fetch("/api/jobs", { method: "POST", body: form, headers: auth });
  const body = await response.json().catch(() => ({}));
  if (response.status !== 202) {
    $("submit").disabled = false;
    const wait = response.headers.get("Retry-After");
    $("error").textContent = (body.detail || response.statusText) + (wait ? ` (retry in ${wait} s)` : "");
    return;
  }
  state.job = body.id;
  $("cancel").disabled = false;
  follow(body.id);
}

async function cancel() {
  if (!state.job) return;
  await fetch(`/api/jobs/${state.job}`, { method: "DELETE", headers: auth });
}

async function renderGallery() {
  const ids = JSON.parse(sessionStorage.getItem("styleengine-jobs") || "[]");
  const box = $("gallery");
  if (!ids.length) return;
  box.innerHTML = "";
  for (const id of ids) {
    const a = document.createElement("a");
    a.href = withToken(`/api/jobs/${id}/result`);
    a.target = "_blank";
    a.innerHTML = `<img loading="lazy" alt="result ${id}" src="${a.href}"><span>${id.slice(0, 8)}</span>`;
    box.append(a);
  }
}

function bindRange(id, format) {
  const update = () => { $(id + "-out").textContent = format(); };
  $(id).addEventListener("input", update);
  update();
}

async function start() {
  const health = await (await fetch("/api/health")).json();
  state.defaults = health.defaults;
  $("server").textContent = `${health.defaults.model} · ${health.defaults.backend} on ${health.defaults.device} · ` +
    `${health.queued} queued, ${health.running} running`;
  $("size").max = health.limits.max_size;
  $("size").value = Math.min(health.defaults.size, health.limits.max_size);
  $("iters").max = health.limits.max_iters;
  $("iters").value = Math.min(health.defaults.iters, health.limits.max_iters);
  $("preserve_colors").checked = health.defaults.preserve_colors;
  bindRange("size", () => `${$("size").value} px`);
  bindRange("iters", () => $("iters").value);
  bindRange("strength", () => `×${strengthWeight().factor.toPrecision(2)}`);
  $("content").addEventListener("change", () => { if ($("content").files[0]) thumb($("content").files[0], $("content-thumb")); });
  $("style").addEventListener("change", () => {
    for (const file of $("style").files) state.styles.push({ file, weight: 5 });
    $("style").value = "";
    renderStyles();
  });
  $("form").addEventListener("submit", submit);
  $("cancel").addEventListener("click", cancel);
  renderGallery();
}

start().catch((e) => { $("server").textContent = "server unreachable: " + e; });
