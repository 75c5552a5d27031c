// The persona page's drop zone: several reference images at once. Each file
// dropped (or chosen) becomes a new row of the gallery inline, as if picked in
// that row's file input, so the save checks and stores it exactly as any
// upload. Plain JavaScript; Django's inlines.js makes the rows.
"use strict";

(() => {
  function addRows(zone, files) {
    const group = document.getElementById(`${zone.dataset.prefix}-group`);
    const addLink = group && group.querySelector(".add-row a");
    if (!addLink) {
      return 0;
    }
    let added = 0;
    for (const file of files) {
      addLink.click();
      const rows = group.querySelectorAll("tr.form-row.dynamic-" + zone.dataset.prefix);
      const row = rows[rows.length - 1];
      const input = row && row.querySelector("input[type=file]");
      if (!input) {
        break;
      }
      const transfer = new DataTransfer();
      transfer.items.add(file);
      input.files = transfer.files;
      added += 1;
    }
    zone.querySelector("[data-drop-status]").textContent = added
      ? `${added} file${added === 1 ? "" : "s"} added below: save the page to upload ${added === 1 ? "it" : "them"}.`
      : "";
    return added;
  }

  document.addEventListener("DOMContentLoaded", () => {
    for (const zone of document.querySelectorAll("[data-drop-zone]")) {
      const picker = zone.querySelector("input[type=file]");
      picker.addEventListener("change", () => {
        addRows(zone, [...picker.files]);
        picker.value = "";
      });
      zone.addEventListener("dragover", (event) => {
        event.preventDefault();
        zone.classList.add("reference-drop-over");
      });
      zone.addEventListener("dragleave", () => zone.classList.remove("reference-drop-over"));
      zone.addEventListener("drop", (event) => {
        event.preventDefault();
        zone.classList.remove("reference-drop-over");
        addRows(zone, [...event.dataTransfer.files]);
      });
    }
  });
})();
