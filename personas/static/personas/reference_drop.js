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
    // A blank new row (the inline's extra one) is filled first.
    const blankInput = () => [...group.querySelectorAll("tr.form-row:not(.has_original):not(.empty-form)")]
      .map((row) => row.querySelector("input[type=file]"))
      .find((input) => input && !input.files.length
        && !input.closest("tr").querySelector(".staged-upload"));
    let added = 0;
    for (const file of files) {
      let input = blankInput();
      if (!input) {
        addLink.click();
        input = blankInput();
      }
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
