// giapranh field page: report sightings and incidents, run checks; reports made without a
// connection are kept on the phone (IndexedDB) with their event ids and sent, oldest
// first, when it returns. The key stays in this tab (sessionStorage) unless the officer
// asks to be remembered on this device (localStorage); it is never cached or put in a URL.
"use strict";

const EN = {
  title: "Field report", key: "Officer's API key", remember: "Remember on this device",
  signin: "Sign in", tab_sighting: "Sighting", tab_incident: "Incident", tab_check: "Check",
  tab_queue: "Queue", sighting: "Report a person or vehicle seen", name: "Full name",
  birth_year: "Birth year", national_id: "ID number", plate: "Plate", address: "Place",
  locate: "Use my position", when: "Time", send: "Send report", incident: "Report an incident",
  incident_type: "Type of incident", summary: "Summary", suspect: "Suspect (name)",
  vehicle: "Vehicle (plate)", bearing: "Direction of flight", unknown: "Unknown",
  north: "North", northeast: "North-east", east: "East", southeast: "South-east",
  south: "South", southwest: "South-west", west: "West", northwest: "North-west",
  immediate: "Urgent: neighbours act now", check: "Check a person or vehicle",
  run_check: "Check", queue: "Reports made", signout: "Sign out",
};
const TEXT = {
  vi: {
    online: "Có kết nối", offline: "Mất kết nối: báo cáo được lưu trên máy và gửi khi có mạng",
    queued: "Đang chờ gửi", sent: "Đã gửi", matched: "Trùng khớp danh sách", refused: "Bị từ chối",
    no_match: "Không có trong danh sách truy tìm.", check_offline: "Không thể kiểm tra khi mất kết nối.",
    empty: "Cần họ tên, số CCCD hoặc biển số.", bad_key: "Khóa không hợp lệ hoặc đã bị thu hồi.",
    contact: "Liên lạc máy chủ lần cuối", never: "chưa", located: "Đã lấy vị trí",
    wanted: "Đối tượng trong danh sách", reasons: "Lý do", action: "Yêu cầu", cautions: "Lưu ý an toàn",
    signout_queue: "Xóa cả các báo cáo chưa gửi trên máy này?",
  },
  en: {
    online: "Online", offline: "Offline: reports are kept on this phone and sent when back online",
    queued: "Waiting to send", sent: "Sent", matched: "Matched a list", refused: "Refused",
    no_match: "Not on any list.", check_offline: "Checks need a connection.",
    empty: "A name, an ID number or a plate is needed.", bad_key: "Unknown or revoked key.",
    contact: "Last contact with the server", never: "never", located: "Position taken",
    wanted: "Listed subject", reasons: "Reasons", action: "Requested", cautions: "Officer safety",
    signout_queue: "Also delete the reports not yet sent from this phone?",
  },
};

const $ = (selector, root = document) => root.querySelector(selector);
const state = {
  key: sessionStorage.getItem("giapranh.field.key") || localStorage.getItem("giapranh.field.key"),
  lang: localStorage.getItem("giapranh.lang") || "vi",
  me: JSON.parse(localStorage.getItem("giapranh.field.me") || "null"),
  contact: localStorage.getItem("giapranh.field.contact"),
  sending: false,
};
const original = {};
const t = (name) => TEXT[state.lang][name];

// ------------------------------------------------------------------------ storage

let database;
function db() {
  if (database) return Promise.resolve(database);
  return new Promise((resolve, reject) => {
    const request = indexedDB.open("giapranh-field", 1);
    request.onupgradeneeded = () => {
      const store = request.result.createObjectStore("reports", { keyPath: "event_id" });
      store.createIndex("created", "created");
    };
    request.onsuccess = () => { database = request.result; resolve(database); };
    request.onerror = () => reject(request.error);
  });
}
async function tx(mode, work) {
  const handle = await db();
  return new Promise((resolve, reject) => {
    const transaction = handle.transaction("reports", mode);
    const result = work(transaction.objectStore("reports"));
    transaction.oncomplete = () => resolve(result && "result" in result ? result.result : result);
    transaction.onerror = () => reject(transaction.error);
  });
}
const allReports = () => tx("readonly", (store) => store.index("created").getAll());
const saveReport = (report) => tx("readwrite", (store) => store.put(report));
const clearReports = () => tx("readwrite", (store) => store.clear());

// ------------------------------------------------------------------------ network

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: {
    "Authorization": "Bearer " + state.key, "Content-Type": "application/json",
    "Accept-Language": state.lang, ...(options.headers || {}) } });
  state.contact = new Date().toISOString();
  localStorage.setItem("giapranh.field.contact", state.contact);
  return response;
}
function errorText(body, status) {
  const error = body && body.error;
  return error ? error.message + (error.field ? " (" + error.field + ")" : "") : "HTTP " + status;
}

// Send what waits, oldest first; stop at the first network failure (still offline) or a
// 5xx/429 (try later). A 4xx is a refusal: kept with its message, not sent again.
async function sendQueued() {
  if (state.sending || !state.key) return;
  state.sending = true;
  try {
    for (const report of await allReports()) {
      if (report.state !== "queued") continue;
      let response;
      try {
        response = await api(report.path, { method: "POST", body: JSON.stringify(report.body) });
      } catch (e) { break; }
      if (response.status === 202) {
        report.state = "sent";
      } else if (response.status === 429 || response.status >= 500) {
        break;
      } else {
        let body = null;
        try { body = await response.json(); } catch (e) {}
        report.state = "refused";
        report.message = errorText(body, response.status);
      }
      await saveReport(report);
    }
    await followSent();
  } finally {
    state.sending = false;
    await render();
  }
}

// Sent sightings: ask whether they matched (the alerts they raised).
async function followSent() {
  for (const report of await allReports()) {
    if (report.state !== "sent" || report.kind !== "sighting") continue;
    let response;
    try { response = await api("/v1/events/" + report.event_id); } catch (e) { return; }
    if (!response.ok) continue;
    const status = await response.json();
    if (status.alerts && status.alerts.length) {
      report.state = "matched";
      report.alerts = status.alerts.length;
      await saveReport(report);
    }
  }
}

async function queue(kind, path, body, summary) {
  const report = { event_id: body.event_id, kind, path, body, summary, state: "queued",
                   created: Date.now() };
  await saveReport(report);
  await render();
  sendQueued();
  return report;
}

// ------------------------------------------------------------------------ forms

const trimmed = (form, name) => (form.elements[name] && form.elements[name].value.trim()) || "";
function subjectOf(form) {
  const subject = {};
  for (const name of ["name", "national_id", "plate"]) {
    if (trimmed(form, name)) subject[name] = trimmed(form, name);
  }
  if (form.elements.birth_year && trimmed(form, "birth_year")) {
    subject.birth_year = parseInt(trimmed(form, "birth_year"), 10);
  }
  return subject;
}
function placeOf(form) {
  const place = { unit_code: state.me.unit_code };
  if (trimmed(form, "address")) place.address = trimmed(form, "address");
  if (form.elements.lat && form.elements.lat.value) {
    place.lat = parseFloat(form.elements.lat.value);
    place.lon = parseFloat(form.elements.lon.value);
  }
  return place;
}
function isoWithOffset(date) {
  const offset = -date.getTimezoneOffset();
  const pad = (n) => String(Math.floor(Math.abs(n))).padStart(2, "0");
  const local = new Date(date.getTime() + offset * 60000).toISOString().slice(0, 19);
  return local + (offset >= 0 ? "+" : "-") + pad(offset / 60) + ":" + pad(offset % 60);
}

$("#sighting").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const subject = subjectOf(form);
  if (!Object.keys(subject).some((k) => k !== "birth_year")) { $(".error", form).textContent = t("empty"); return; }
  $(".error", form).textContent = "";
  const when = form.elements.when.value ? new Date(form.elements.when.value) : new Date();
  const body = { event_id: crypto.randomUUID(), occurred_at: isoWithOffset(when), subject,
                 place: placeOf(form) };
  // Cleared before the report is saved, not after: what an officer types for the next
  // report meanwhile is theirs, and a reset after the save wiped it.
  form.reset();
  await queue("sighting", "/v1/sightings", body,
              [subject.name, subject.national_id, subject.plate].filter(Boolean).join(" · "));
});

$("#incident").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const body = { event_id: crypto.randomUUID(), occurred_at: isoWithOffset(new Date()),
                 incident_type: trimmed(form, "incident_type"), place: placeOf(form),
                 severity: form.elements.immediate.checked ? "immediate" : "expected" };
  if (trimmed(form, "summary")) body.summary = trimmed(form, "summary");
  if (trimmed(form, "suspect")) body.suspects = [{ name: trimmed(form, "suspect") }];
  if (trimmed(form, "vehicle")) body.vehicles = [{ plate: trimmed(form, "vehicle") }];
  if (form.elements.bearing.value) body.fled_bearing = parseInt(form.elements.bearing.value, 10);
  form.reset();  // (before the save: see the sighting's)
  await queue("incident", "/v1/incidents", body, body.incident_type);
});

$("#check").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = event.target;
  const out = $("#check-result");
  const error = $(".error", form);
  error.textContent = "";
  out.textContent = "";
  const subject = subjectOf(form);
  if (!Object.keys(subject).length) { error.textContent = t("empty"); return; }
  let response;
  try {
    response = await api("/v1/checks", { method: "POST", body: JSON.stringify({ subject }) });
  } catch (e) { error.textContent = t("check_offline"); return; }
  const body = await response.json();
  if (!response.ok) { error.textContent = errorText(body, response.status); return; }
  if (!body.matches.length) { out.textContent = t("no_match"); return; }
  for (const match of body.matches) {
    const card = document.createElement("div");
    card.className = "match";
    const title = document.createElement("strong");
    const entry = match.entry;
    title.textContent = t("wanted") + ": " + (entry.full_name || entry.plates || entry.entry_id)
      + (entry.birth_year ? " (" + entry.birth_year + ")" : "") + " — " + entry.owner_unit;
    card.append(title);
    const facts = [];
    if (match.action) facts.push(t("action") + ": " + match.action);
    if (match.cautions && match.cautions.length) facts.push(t("cautions") + ": " + match.cautions.join(", "));
    for (const fact of facts) { const p = document.createElement("p"); p.textContent = fact; card.append(p); }
    const list = document.createElement("ul");
    for (const reason of match.reasons) {
      const item = document.createElement("li");
      item.textContent = reason.detail;
      list.append(item);
    }
    const label = document.createElement("p");
    label.textContent = t("reasons") + ":";
    card.append(label, list);
    out.append(card);
  }
});

for (const button of document.querySelectorAll(".locate")) {
  button.addEventListener("click", () => {
    const form = button.closest("form");
    navigator.geolocation.getCurrentPosition((position) => {
      form.elements.lat.value = position.coords.latitude;
      form.elements.lon.value = position.coords.longitude;
      button.textContent = t("located") + " ✓";
    });
  });
}

// ------------------------------------------------------------------------ rendering

async function render() {
  const net = $("#net");
  net.className = "net " + (navigator.onLine ? "online" : "offline");
  net.textContent = navigator.onLine ? t("online") : t("offline");
  $("#contact").textContent = t("contact") + ": "
    + (state.contact ? new Date(state.contact).toLocaleString(state.lang) : t("never"));
  if (state.me) $("#who").textContent = state.me.unit_name + " (" + state.me.unit_code + ")"
    + (state.me.person_name ? " · " + state.me.person_name : "");
  const reports = await allReports();
  const items = [];
  for (const report of reports.reverse()) {
    const item = document.createElement("li");
    item.className = "state-" + report.state;
    item.dataset.eventId = report.event_id;
    item.dataset.state = report.state;
    item.textContent = new Date(report.created).toLocaleTimeString(state.lang) + " · "
      + report.summary + " — " + t(report.state) + (report.message ? ": " + report.message : "");
    items.push(item);
  }
  $("#reports").replaceChildren(...items);  // (at once: never an empty list in between)
}

function applyLanguage() {
  document.documentElement.lang = state.lang;
  $("#lang").value = state.lang;
  for (const element of document.querySelectorAll("[data-t]")) {
    if (!(element.dataset.t in original)) original[element.dataset.t] = element.textContent;
    element.textContent = state.lang === "vi" ? original[element.dataset.t] : (EN[element.dataset.t] || original[element.dataset.t]);
  }
  render();
}

function showTab(name) {
  for (const tab of document.querySelectorAll(".tab")) tab.hidden = tab.id !== name;
  for (const button of document.querySelectorAll("nav button")) button.classList.toggle("on", button.dataset.tab === name);
}
for (const button of document.querySelectorAll("nav button")) button.addEventListener("click", () => showTab(button.dataset.tab));

async function signIn(key, remember) {
  state.key = key;
  let response;
  try { response = await api("/v1/me"); } catch (e) {
    if (state.me) return enter();  // offline: the last known unit, the key as given
    $("#signin-error").textContent = t("check_offline");
    return;
  }
  if (!response.ok) { state.key = null; $("#signin-error").textContent = t("bad_key"); return; }
  state.me = await response.json();
  localStorage.setItem("giapranh.field.me", JSON.stringify(state.me));
  sessionStorage.setItem("giapranh.field.key", key);
  if (remember) localStorage.setItem("giapranh.field.key", key);
  enter();
}
function enter() {
  $("#signin").hidden = true;
  $("#app").hidden = false;
  showTab("sighting");
  render();
  sendQueued();
}
$("#signin-button").addEventListener("click", () => signIn($("#key").value.trim(), $("#remember").checked));
$("#signout").addEventListener("click", async () => {
  if (confirm(t("signout_queue"))) await clearReports();
  sessionStorage.removeItem("giapranh.field.key");
  localStorage.removeItem("giapranh.field.key");
  localStorage.removeItem("giapranh.field.me");
  state.key = null; state.me = null;
  $("#app").hidden = true;
  $("#signin").hidden = false;
});
$("#lang").addEventListener("change", (event) => {
  state.lang = event.target.value;
  localStorage.setItem("giapranh.lang", state.lang);
  applyLanguage();
});
window.addEventListener("online", () => { render(); sendQueued(); });
window.addEventListener("offline", render);
setInterval(() => { if (navigator.onLine) sendQueued(); }, 15000);

if ("serviceWorker" in navigator) navigator.serviceWorker.register("/field/sw.js", { scope: "/field/" });
applyLanguage();
if (state.key) enter();
