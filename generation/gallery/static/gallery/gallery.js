// Review gallery: live progress bars, previews and counts, the before/after
// compare slider, the inpainting mask brush, the keyboard shortcuts and keyboard
// review on a grid. Plain JavaScript, no dependency, nothing from the network.
"use strict";

(() => {
  const POLL_MILLISECONDS = 1000;

  // --- Live progress ---------------------------------------------------------
  // Every [data-progress] bar is refreshed from the gallery's JSON endpoint.
  // When its content finishes, its card ([data-card] with data-card-url) is
  // fetched again and swapped in; a bar marked data-reload-page reloads the page.

  function showProgress(bar, row) {
    const percent = Math.max(0, Math.min(100, row.percent));
    bar.dataset.status = row.status;
    bar.querySelector(".gallery-progress-bar > span").style.width = `${percent}%`;
    bar.querySelector("[role=progressbar]").setAttribute("aria-valuenow", String(percent));
    bar.querySelector(".gallery-progress-label").textContent = row.label;
    // The worker's live preview: a new URL (its step) for each new image.
    // On a card it takes the thumbnail's place.
    const preview = bar.querySelector("[data-preview]")
      || bar.closest("[data-card]")?.querySelector(".gallery-thumb [data-preview]");
    if (preview && row.preview && preview.getAttribute("src") !== row.preview) {
      const placeholder = bar.closest("[data-card]")?.querySelector(".gallery-placeholder");
      if (placeholder) {
        placeholder.replaceWith(preview);
      }
      preview.src = row.preview;
      preview.hidden = false;
    }
  }

  // Fetch one card again and swap it in; the new card element, or null.
  async function refreshCard(card) {
    const response = await fetch(card.dataset.cardUrl + window.location.search, {
      credentials: "same-origin",
    });
    if (!response.ok) {
      return null;
    }
    const template = document.createElement("template");
    template.innerHTML = (await response.text()).trim();
    const fresh = template.content.firstElementChild;
    card.replaceWith(fresh);
    return fresh;
  }

  // A persona's counts ("1 queued or running", "2 pending review") follow
  // its cards: fetched again whenever a card changes.
  async function refreshCounts() {
    for (const counts of document.querySelectorAll("[data-counts-url]")) {
      const response = await fetch(counts.dataset.countsUrl, { credentials: "same-origin" });
      if (response.ok) {
        counts.outerHTML = await response.text();
      }
    }
  }

  // Swap in the finished card; true when there is no card to swap (reload).
  async function replaceCard(bar) {
    bar.removeAttribute("data-progress");
    const card = bar.closest("[data-card]");
    if (!card || !card.dataset.cardUrl) {
      return true;
    }
    await refreshCard(card);
    await refreshCounts();
    return false;
  }

  function startProgress(root) {
    const url = root.dataset.progressUrl;
    let reloading = false;
    const tick = async () => {
      const bars = [...document.querySelectorAll("[data-progress]")];
      if (!bars.length || reloading) {
        return;
      }
      const ids = [...new Set(bars.map((bar) => bar.dataset.contentId))];
      try {
        const response = await fetch(`${url}?ids=${ids.join(",")}`, {
          credentials: "same-origin",
          headers: { Accept: "application/json" },
        });
        if (response.ok) {
          const { contents } = await response.json();
          for (const bar of bars) {
            const row = contents[bar.dataset.contentId];
            if (!row) {
              continue;
            }
            if (!bar.dataset.renderedStatus) {
              bar.dataset.renderedStatus = bar.dataset.status;
            }
            showProgress(bar, row);
            // The run ended while its scores are pending: show the output now
            // (the new card or page has its own "scoring…" bar, polled on).
            const runEnded = row.ended
              && ["queued", "running"].includes(bar.dataset.renderedStatus);
            if (row.finished || runEnded) {
              const reloadPage = bar.hasAttribute("data-reload-page")
                || (await replaceCard(bar));
              // A mask being painted is not thrown away: the scores show
              // on the next visit instead.
              if (reloadPage && !document.querySelector("[data-inpaint][data-painted]")) {
                reloading = true;
                window.location.reload();
                return;
              }
            }
          }
        }
      } catch (error) {
        // A dropped request: the next tick tries again.
        console.debug("gallery progress", error);
      }
      window.setTimeout(tick, POLL_MILLISECONDS);
    };
    tick();
  }

  // --- Before/after compare slider --------------------------------------------
  // The output is clipped right of --position; dragging anywhere on the image
  // (or the arrow keys on the focused handle) moves it.

  function startCompare(compare) {
    const handle = compare.querySelector("[data-compare-handle]");
    const setPosition = (percent) => {
      const value = Math.max(0, Math.min(100, percent));
      compare.style.setProperty("--position", `${value}%`);
      handle.setAttribute("aria-valuenow", String(Math.round(value)));
    };
    const followPointer = (event) => {
      const box = compare.getBoundingClientRect();
      setPosition(((event.clientX - box.left) / box.width) * 100);
    };
    compare.addEventListener("pointerdown", (event) => {
      compare.setPointerCapture(event.pointerId);
      followPointer(event);
      handle.focus();
      event.preventDefault();
    });
    compare.addEventListener("pointermove", (event) => {
      if (compare.hasPointerCapture(event.pointerId)) {
        followPointer(event);
      }
    });
    compare.addEventListener("pointerup", (event) => {
      compare.releasePointerCapture(event.pointerId);
    });
    handle.addEventListener("keydown", (event) => {
      const now = Number(handle.getAttribute("aria-valuenow"));
      const step = event.shiftKey ? 10 : 2;
      const moves = { ArrowLeft: now - step, ArrowRight: now + step, Home: 0, End: 100 };
      if (event.key in moves) {
        setPosition(moves[event.key]);
        event.preventDefault();
      }
    });
    const before = compare.querySelector("[data-compare-before]");
    const sources = document.querySelectorAll("[data-compare-source]");
    for (const button of sources) {
      button.addEventListener("click", () => {
        before.src = button.dataset.compareSource;
        for (const other of sources) {
          other.setAttribute("aria-pressed", String(other === button));
        }
      });
    }
  }

  // --- Keyboard shortcuts ------------------------------------------------------
  // A key clicks the element with data-shortcut="<key>" (a approve, r reject,
  // g regenerate, e regenerate exactly, j next, k previous), unless the person
  // is typing. A form is submitted once: a second press does nothing.

  function startShortcuts() {
    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) {
        return;
      }
      if (event.target.closest("input, textarea, select, [contenteditable]")) {
        return;
      }
      const element = document.querySelector(`[data-shortcut="${CSS.escape(event.key)}"]`);
      if (element) {
        event.preventDefault();
        element.click();
      }
    });
    for (const form of document.querySelectorAll(".gallery-actions form")) {
      form.addEventListener("submit", (event) => {
        if (form.dataset.submitted) {
          event.preventDefault();
        }
        form.dataset.submitted = "true";
      });
    }
    // Reject asks for a note when none was typed; cancelling the prompt cancels.
    for (const button of document.querySelectorAll("[data-prompt-note]")) {
      button.addEventListener("click", (event) => {
        const note = button.form.elements.note;
        if (note.value.trim()) {
          return;
        }
        const answer = window.prompt(button.dataset.promptNote, "");
        if (answer === null) {
          event.preventDefault();
          return;
        }
        note.value = answer;
      });
    }
  }

  // --- Inpainting mask brush ------------------------------------------------
  // [data-inpaint] holds a canvas at the output's own size over the output:
  // the brush paints white (the region to redraw), the eraser removes paint,
  // undo steps back one stroke, clear removes everything. On submit the paint
  // becomes a black-and-white PNG of the output's size in the mask file input.

  const UNDO_DEPTH = 30;

  function startInpaint(root) {
    const canvas = root.querySelector("[data-inpaint-canvas]");
    const form = root.querySelector("[data-inpaint-form]");
    const maskInput = root.querySelector("[data-inpaint-mask]");
    const size = root.querySelector("[data-inpaint-size]");
    const eraser = root.querySelector("[data-inpaint-eraser]");
    const context = canvas.getContext("2d");
    const history = [];
    let last = null;

    function remember() {
      history.push(context.getImageData(0, 0, canvas.width, canvas.height));
      if (history.length > UNDO_DEPTH) {
        history.shift();
      }
    }

    // Pointer position in the canvas's own pixels (it is shown scaled).
    function at(event) {
      const box = canvas.getBoundingClientRect();
      return {
        x: ((event.clientX - box.left) * canvas.width) / box.width,
        y: ((event.clientY - box.top) * canvas.height) / box.height,
      };
    }

    function paint(from, to) {
      const erasing = eraser.getAttribute("aria-pressed") === "true";
      context.globalCompositeOperation = erasing ? "destination-out" : "source-over";
      context.strokeStyle = "#fff";
      context.lineWidth = Number(size.value);
      context.lineCap = "round";
      context.lineJoin = "round";
      context.beginPath();
      context.moveTo(from.x, from.y);
      context.lineTo(to.x, to.y);
      context.stroke();
    }

    canvas.addEventListener("pointerdown", (event) => {
      event.preventDefault();
      root.dataset.painted = "true";
      remember();
      canvas.setPointerCapture(event.pointerId);
      last = at(event);
      paint(last, last);
    });
    canvas.addEventListener("pointermove", (event) => {
      if (last === null) {
        return;
      }
      const point = at(event);
      paint(last, point);
      last = point;
    });
    for (const name of ["pointerup", "pointercancel"]) {
      canvas.addEventListener(name, () => {
        last = null;
      });
    }
    eraser.addEventListener("click", () => {
      const pressed = eraser.getAttribute("aria-pressed") === "true";
      eraser.setAttribute("aria-pressed", pressed ? "false" : "true");
    });
    root.querySelector("[data-inpaint-undo]").addEventListener("click", () => {
      const previous = history.pop();
      if (previous) {
        context.putImageData(previous, 0, 0);
      }
    });
    root.querySelector("[data-inpaint-clear]").addEventListener("click", () => {
      remember();
      context.clearRect(0, 0, canvas.width, canvas.height);
    });
    form.addEventListener("submit", (event) => {
      if (maskInput.files.length) {
        return; // the mask is attached: this is the real submit
      }
      event.preventDefault();
      const mask = document.createElement("canvas");
      mask.width = canvas.width;
      mask.height = canvas.height;
      const maskContext = mask.getContext("2d");
      maskContext.fillStyle = "#000";
      maskContext.fillRect(0, 0, mask.width, mask.height);
      maskContext.drawImage(canvas, 0, 0);
      mask.toBlob((blob) => {
        const files = new DataTransfer();
        files.items.add(new File([blob], "mask.png", { type: "image/png" }));
        maskInput.files = files.files;
        form.requestSubmit();
      }, "image/png");
    });
  }

  // --- Keyboard review on a grid ----------------------------------------------
  // j or an arrow moves the focus from card to card; a approves and r rejects
  // the card in focus (the same action URLs as the content page's buttons),
  // then the card is fetched again and the focus moves on to the next.

  function startGridReview(grid) {
    const token = document.querySelector("#grid-review [name=csrfmiddlewaretoken]");
    const cards = () => [...grid.querySelectorAll("[data-card]")];
    const focusCard = (card) => card && card.querySelector(".gallery-thumb").focus();
    const current = () => document.activeElement && document.activeElement.closest("[data-card]");
    let busy = false;

    const review = async (card, url) => {
      if (!url || !token || busy) {
        return;
      }
      busy = true;
      try {
        const body = new FormData();
        body.append("csrfmiddlewaretoken", token.value);
        body.append("next", window.location.pathname + window.location.search);
        const response = await fetch(url, { method: "POST", body, credentials: "same-origin" });
        if (response.ok) {
          const index = cards().indexOf(card);
          await refreshCard(card);
          await refreshCounts();
          focusCard(cards()[Math.min(index + 1, cards().length - 1)]);
        }
      } finally {
        busy = false;
      }
    };

    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey || event.isComposing) {
        return;
      }
      if (event.target.closest("input, textarea, select, [contenteditable]")) {
        return;
      }
      const all = cards();
      const card = current();
      const index = card ? all.indexOf(card) : -1;
      const moves = { j: 1, ArrowRight: 1, ArrowDown: 1, k: -1, ArrowLeft: -1, ArrowUp: -1 };
      if (event.key in moves) {
        const next = index < 0 ? 0 : Math.max(0, Math.min(all.length - 1, index + moves[event.key]));
        focusCard(all[next]);
        event.preventDefault();
      } else if (card && (event.key === "a" || event.key === "r")) {
        event.preventDefault();
        review(card, event.key === "a" ? card.dataset.approveUrl : card.dataset.rejectUrl);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const root = document.getElementById("gallery");
    if (!root) {
      return;
    }
    startProgress(root);
    document.querySelectorAll("[data-compare]").forEach(startCompare);
    document.querySelectorAll("[data-inpaint]").forEach(startInpaint);
    document.querySelectorAll("[data-grid-review]").forEach(startGridReview);
    startShortcuts();
  });
})();
