// The field page's service worker: the page itself is cached so it opens without a
// connection; API answers (and the key that asks for them) are never cached.
const CACHE = "giapranh-field-v1";
const SHELL = ["/field/", "/field/app.js", "/field/app.css", "/field/manifest.webmanifest",
               "/field/icon.svg"];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys().then((names) => Promise.all(
    names.filter((name) => name !== CACHE).map((name) => caches.delete(name))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin || !SHELL.includes(url.pathname)) {
    return;  // the API, and anything else: straight to the network
  }
  // The shell: the network when it answers (fresh code), else the cached copy.
  event.respondWith(fetch(event.request).then((response) => {
    const copy = response.clone();
    caches.open(CACHE).then((cache) => cache.put(event.request, copy));
    return response;
  }).catch(() => caches.match(event.request)));
});
