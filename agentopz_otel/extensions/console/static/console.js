// agentopz console: ask before an action. Without script the server shows a confirmation page instead.
"use strict";
document.addEventListener("submit", (event) => {
  const form = event.target;
  if (!form.matches("form.action")) return;
  const confirmed = form.querySelector("input[name=confirmed]");
  if (confirmed.value === "yes") return;
  if (window.confirm(form.dataset.confirm)) {
    confirmed.value = "yes";
  } else {
    event.preventDefault();
  }
});
