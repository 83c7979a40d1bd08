// dispatchbox console: live refresh of [data-refresh] blocks and a JSON check on the payload
// editor. Plain JavaScript, served by dispatchbox itself: no build step, no CDN.
"use strict";

function refreshEvery(element) {
  const url = element.getAttribute("data-refresh");
  const every = parseInt(element.getAttribute("data-every") || "5000", 10);
  async function tick() {
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } });
      if (response.ok && !response.redirected) {
        element.innerHTML = await response.text();
        element.setAttribute("data-refreshed", new Date().toISOString());
      }
    } catch (err) {
      // A failed refresh keeps the last figures; the next tick tries again.
    }
    setTimeout(tick, every);
  }
  setTimeout(tick, every);
}

function checkJson(textarea) {
  const status = document.getElementById("json-status");
  const help = status ? status.textContent : "";
  const button = textarea.form.querySelector("button[type=submit]");
  textarea.addEventListener("input", function () {
    try {
      JSON.parse(textarea.value);
      textarea.classList.remove("invalid");
      if (status) status.textContent = help;
      if (button) button.disabled = false;
    } catch (err) {
      textarea.classList.add("invalid");
      if (status) status.textContent = err.message;
      if (button) button.disabled = true;
    }
  });
}

document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("[data-refresh]").forEach(refreshEvery);
  document.querySelectorAll("textarea[data-json]").forEach(checkJson);
});
