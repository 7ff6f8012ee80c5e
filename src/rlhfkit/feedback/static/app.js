// rlhfkit feedback: timer, keyboard shortcuts, drag-and-drop ranking. No dependencies.
(function () {
  "use strict";
  const $ = (s, el) => (el || document).querySelector(s);
  const $$ = (s, el) => Array.from((el || document).querySelectorAll(s));
  const typing = (e) => /^(TEXTAREA|INPUT|SELECT)$/.test(e.target.tagName) && !["radio", "checkbox"].includes(e.target.type);

  // time on task: counts up from what the server says has elapsed
  const timer = $("#timer");
  if (timer) {
    let t = parseInt(timer.dataset.elapsed || "0", 10);
    const show = () => { const m = Math.floor(t / 60), s = t % 60; timer.textContent = String(m).padStart(2, "0") + ":" + String(s).padStart(2, "0"); };
    show();
    if (timer.dataset.running === "1") setInterval(() => { t += 1; show(); }, 1000);
  }

  const form = $("#task-form");
  if (!form) return;
  const kind = form.dataset.kind;
  const submit = () => { if (form.reportValidity()) { form.requestSubmit ? form.requestSubmit() : form.submit(); } };
  const skip = () => { const f = $("#skip-form"); if (f) f.submit(); };

  if (kind === "rating") {
    const cards = $$(".response", form);
    let cur = 0;
    const focus = (i) => { cur = Math.max(0, Math.min(cards.length - 1, i)); cards.forEach((c, j) => c.classList.toggle("current", j === cur)); cards[cur].scrollIntoView({ block: "nearest" }); };
    cards.forEach((c, i) => c.addEventListener("click", () => focus(i)));
    document.addEventListener("keydown", (e) => {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); submit(); } return; }
      if (/^[1-7]$/.test(e.key)) {
        const r = $(`input[type=radio][value="${e.key}"]`, cards[cur]);
        if (r) { r.checked = true; e.preventDefault(); if (cur < cards.length - 1) focus(cur + 1); }
      } else if (e.key === "j" || e.key === "ArrowDown") { focus(cur + 1); e.preventDefault(); }
      else if (e.key === "k" || e.key === "ArrowUp") { focus(cur - 1); e.preventDefault(); }
      else if (e.key === "Enter") { e.preventDefault(); submit(); }
      else if (e.key === "s") { skip(); }
    });
  }

  if (kind === "pairwise") {
    document.addEventListener("keydown", (e) => {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      const r = $(`input[data-key="${e.key}"]`, form);
      if (r) { r.checked = true; e.preventDefault(); }
      else if (e.key === "Enter") { e.preventDefault(); submit(); }
      else if (e.key === "s") { skip(); }
    });
  }

  if (kind === "ranking") {
    const input = $("#ranking-input");
    const btn = $("#submit");
    const pool = $('.pool .drop', form);
    const cards = () => $$(".rcard", form);
    let sel = null;
    const update = () => {
      const tiers = $$(".tier .drop", form).map((d) => $$(".rcard", d).map((c) => c.dataset.rid)).filter((t) => t.length);
      input.value = JSON.stringify(tiers);
      const left = $$(".rcard", pool).length;
      if (btn) btn.disabled = left > 0;
      pool.classList.toggle("all-ranked", left === 0);
    };
    const select = (c) => { sel = c; cards().forEach((x) => x.classList.toggle("selected", x === c)); if (c) c.focus({ preventScroll: false }); };
    const place = (c, tier) => {
      const target = tier === "pool" ? pool : $(`.tier .drop[data-tier="${tier}"]`, form);
      if (target && c) { target.appendChild(c); update(); select(c); }
    };
    cards().forEach((c) => {
      c.addEventListener("click", () => select(c));
      c.addEventListener("dragstart", (e) => { e.dataTransfer.setData("text/plain", c.dataset.rid); c.classList.add("dragging"); });
      c.addEventListener("dragend", () => c.classList.remove("dragging"));
    });
    $$(".drop", form).forEach((d) => {
      d.addEventListener("dragover", (e) => { e.preventDefault(); d.classList.add("over"); });
      d.addEventListener("dragleave", () => d.classList.remove("over"));
      d.addEventListener("drop", (e) => {
        e.preventDefault(); d.classList.remove("over");
        const c = $(`.rcard[data-rid="${e.dataTransfer.getData("text/plain")}"]`, form);
        if (c) place(c, d.dataset.tier);
      });
    });
    document.addEventListener("keydown", (e) => {
      if (typing(e) || e.ctrlKey || e.metaKey || e.altKey) return;
      const all = cards();
      const i = sel ? all.indexOf(sel) : -1;
      const k = parseInt(form.querySelector(".ranking").dataset.k, 10);
      if (e.key === "j" || e.key === "ArrowDown" || e.key === "ArrowRight") { select(all[Math.min(all.length - 1, i + 1)]); e.preventDefault(); }
      else if (e.key === "k" || e.key === "ArrowUp" || e.key === "ArrowLeft") { select(all[Math.max(0, i - 1)]); e.preventDefault(); }
      else if (/^[0-9]$/.test(e.key)) {
        const n = parseInt(e.key, 10);
        if (!sel) select($(".rcard", pool) || all[0]);
        if (n === 0) place(sel, "pool");
        else if (n <= k) {
          const moved = sel; place(moved, n - 1);
          const next = $(".rcard", pool); if (next) select(next);
        }
        e.preventDefault();
      } else if (e.key === "Enter") { e.preventDefault(); if (!btn || !btn.disabled) submit(); }
      else if (e.key === "s") { skip(); }
    });
    form.addEventListener("submit", update);
    update();
    select($(".rcard", pool));
  }
})();
