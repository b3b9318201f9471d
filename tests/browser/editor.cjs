// Drives the layout editor at `/` in headless Chromium (Debian's) with playwright-core, as a
// user would: draws, composes, undoes, brushes, paints labels, repairs an upload, downloads.
// Usage: node editor.cjs BASE_URL WORK_DIR SHOTS_DIR; exits non-zero naming the failed check.
// tests/browser.rs runs it against a real `mixgan serve` and checks the downloaded files.
"use strict";
const path = require("path");
const { chromium } = require(path.join(process.env.MIXGAN_NODE_TOOLS, "node_modules", "playwright-core"));

const [base, work, shots] = process.argv.slice(2);
const BG = [32, 64, 96];

function check(ok, what) {
  if (!ok) throw new Error("check failed: " + what);
  console.log("ok", what);
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.MIXGAN_CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1400, height: 900 }, acceptDownloads: true });
    // Seeded dice, so that the regions' seeds (and the screenshots) are the same every run.
    await page.addInitScript(() => {
      let s = 12345;
      Math.random = () => ((s = (s * 1103515245 + 12345) % 2147483648) / 2147483648);
    });
    const errors = [];
    page.on("pageerror", (e) => errors.push(e.message));

    // Waits until the preview that the last change asked for has come back.
    const composed = () => page.evaluate(() => Number(document.body.dataset.composed || 0));
    async function settle(before) {
      await page.waitForTimeout(450); // longer than the page's debounce
      await page.waitForFunction(() => !busy(), null, { timeout: 120000 });
      if (before !== undefined) check((await composed()) > before, "a new preview came back");
      check(!(await page.textContent("#error")), "no error shown: " + (await page.textContent("#error")));
    }
    const pixel = (x, y) => page.evaluate(([x, y]) => [...document.getElementById("result").getContext("2d").getImageData(x, y, 1, 1).data].slice(0, 3), [x, y]);
    const far = (a, b) => Math.max(...a.map((v, i) => Math.abs(v - b[i])));
    const layout = () => page.evaluate(() => layoutJson());
    const set = (sel, value) => page.evaluate(([sel, value]) => {
      const el = document.querySelector(sel);
      el.value = value;
      el.dispatchEvent(new Event("change"));
    }, [sel, value]);
    async function stroke(points) {
      const box = await page.locator("#overlay").boundingBox();
      const size = await page.evaluate(() => [state.width, state.height]);
      const at = ([x, y]) => [box.x + (x * box.width) / size[0], box.y + (y * box.height) / size[1]];
      await page.mouse.move(...at(points[0]));
      await page.mouse.down();
      for (const p of points.slice(1)) await page.mouse.move(...at(p), { steps: 6 });
      await page.mouse.up();
    }

    await page.goto(base + "/");
    await page.waitForSelector("body[data-ready]");
    const classes = await page.$$eval("#draw-class option", (o) => o.map((x) => x.value));
    check(classes.join() === "background,face,hand", "the classes come from /v1/models: " + classes);
    await settle();

    // A 256 x 256 canvas on a solid colour.
    await set("#width", "256");
    await set("#height", "256");
    await set("#bg-kind", "color");
    await set("#bg-color", "#204060");
    let n = await composed();
    await settle(n);
    check(far(await pixel(10, 10), BG) <= 2, "the background colour is on the canvas");

    // An ellipse of the face class.
    await page.click("[data-tool=ellipse]");
    await page.selectOption("#draw-class", "face");
    n = await composed();
    await stroke([[80, 56], [176, 184]]);
    await settle(n);
    const l1 = await layout();
    check(l1.regions.length === 1 && l1.regions[0].class === "face" && l1.regions[0].ellipse, "one face ellipse: " + JSON.stringify(l1.regions));
    const face = await pixel(128, 110);
    check(far(face, BG) > 30, `the face is drawn inside the ellipse (${face})`);
    check(far(await pixel(8, 248), BG) <= 2, "outside the ellipse the background is untouched");
    check((await page.$$("#regions li")).length === 1, "the region list shows it");

    // Undo takes it away, redo brings it back.
    n = await composed();
    await page.click("#undo");
    await settle(n);
    check((await page.$$("#regions li")).length === 0 && far(await pixel(128, 110), BG) <= 2, "undo removes the face");
    n = await composed();
    await page.click("#redo");
    await settle(n);
    check(far(await pixel(128, 110), face) <= 2, "redo brings the same face back");

    // A brushed hand.
    await page.click("[data-tool=brush]");
    await page.selectOption("#draw-class", "hand");
    await set("#brush-size", "28");
    await page.click("#regions li"); // the face is selected: a new brush region, not its mask
    await page.evaluate(() => { selected = null; });
    n = await composed();
    await stroke([[20, 214], [70, 230], [120, 222]]);
    await settle(n);
    const l2 = await layout();
    const hand = l2.regions.find((r) => r.class === "hand");
    check(hand && hand.mask && hand.box[2] > 90 && hand.box[3] >= 28, "the brush made a mask region: " + JSON.stringify(hand && hand.box));
    check(far(await pixel(70, 228), BG) > 20, "the hand is drawn under the stroke");

    // A label map painted with the face class.
    await page.click("[data-tool=label]");
    await page.selectOption("#draw-class", "face");
    await set("#brush-size", "40");
    n = await composed();
    await stroke([[196, 30], [236, 40], [236, 80]]);
    await settle(n);
    const l3 = await layout();
    check(l3.label_map && l3.label_map.palette.face, "the label map is in the layout");
    check(far(await pixel(228, 52), BG) > 20, "the painted label is drawn as a face");
    await page.screenshot({ path: path.join(shots, "editor.png") });

    // Downloads: the picture and the layout that makes it.
    const save = async (sel, name) => {
      const [dl] = await Promise.all([page.waitForEvent("download"), page.click(sel)]);
      await dl.saveAs(path.join(work, name));
    };
    await save("#download-image", "picture.png");
    await save("#download-layout", "layout.json");
    check(true, "downloaded the picture and the layout");

    // A polygon: click its corners, double-click to close.
    await page.click("[data-tool=polygon]");
    await page.selectOption("#draw-class", "hand");
    const box = await page.locator("#overlay").boundingBox();
    const at = ([x, y]) => [box.x + (x * box.width) / 256, box.y + (y * box.height) / 256];
    n = await composed();
    for (const p of [[150, 150], [230, 160], [220, 240]]) await page.mouse.click(...at(p));
    await page.mouse.dblclick(...at([160, 236]));
    await settle(n);
    const l4 = await layout();
    const poly = l4.regions.find((r) => r.polygon);
    check(poly && poly.polygon.length >= 3 && poly.class === "hand", "a hand polygon: " + JSON.stringify(poly && poly.polygon));

    // The eraser takes the right half of the brushed hand away.
    await page.click("[data-tool=select]");
    await page.evaluate(() => { selected = state.regions.find((r) => r.shape === "mask").id; });
    await page.click("[data-tool=brush]");
    await page.check("#erase");
    await set("#brush-size", "60");
    n = await composed();
    await stroke([[80, 200], [80, 250], [130, 250], [130, 200]]);
    await settle(n);
    await page.uncheck("#erase");
    const erased = (await layout()).regions.find((r) => r.mask);
    check(erased.box[0] + erased.box[2] < 60, "the eraser trimmed the mask to " + JSON.stringify(erased.box));

    // Dragging the last row of the list to the top brings the face to the front.
    const front = () => page.$eval("#regions li b", (b) => b.textContent);
    check((await front()) === "hand", "the polygon is in front");
    n = await composed();
    await page.locator("#regions li").last().dragTo(page.locator("#regions li").first());
    await settle(n);
    const order = (await layout()).regions.map((r) => r.class + (r.mask ? "/mask" : ""));
    check(order[order.length - 1] === "face" && (await front()) === "face", "the face is on top now: " + order);
    n = await composed();
    await page.click("#undo");
    await settle(n);
    check((await front()) === "hand", "undo puts the order back");

    // An example opened from the list composes to the same picture as the example itself.
    await page.goto(base + "/");
    await page.waitForSelector("body[data-ready]");
    await settle();
    n = await composed();
    await page.selectOption("#example", "portrait.json");
    await settle(n);
    check((await page.$$("#regions li")).length === 3, "the portrait example has its three regions");
    await page.screenshot({ path: path.join(shots, "example.png") });
    await save("#download-image", "portrait.png");

    // Repair: upload the picture, mark the face, project.
    await page.goto(base + "/");
    await page.waitForSelector("body[data-ready]");
    await settle();
    await page.evaluate(() => {
      window.progressSeen = [];
      new MutationObserver(() => window.progressSeen.push(document.getElementById("progress-text").textContent))
        .observe(document.getElementById("progress-text"), { childList: true, characterData: true, subtree: true });
    });
    n = await composed();
    await page.setInputFiles("#bg-image", path.join(work, "picture.png"));
    await settle(n);
    check((await page.evaluate(() => [state.width, state.height])).join() === "256,256", "the canvas takes the picture's size");
    await page.click("[data-tool=ellipse]");
    await page.selectOption("#draw-class", "face");
    await page.uncheck("#live");
    await stroke([[84, 60], [172, 180]]);
    await page.check("#re-project");
    await set("#re-project-steps", "30");
    n = await composed();
    await page.click("#compose");
    await settle(n);
    const seen = await page.evaluate(() => window.progressSeen);
    check(seen.some((t) => /^project 30\/30/.test(t)), "the progress bar followed the projection: " + seen.slice(-4).join(" | "));
    check(seen.includes("done") && (await page.$eval("#progress", (p) => p.value === p.max)), "the progress bar is full");
    const repairedLayout = await layout();
    check(repairedLayout.background.image && repairedLayout.regions[0].project === true, "the layout repairs the upload");
    await page.screenshot({ path: path.join(shots, "repair.png") });
    await save("#download-image", "repaired.png");
    check(errors.length === 0, "no script errors: " + errors.join("; "));
  } finally {
    await browser.close();
  }
})().catch((e) => {
  console.error(e.stack || String(e));
  process.exit(1);
});
