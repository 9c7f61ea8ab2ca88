// Drives the official editor in headless Chromium through playwright-core (no downloaded browser).
// Usage: node drive_editor.cjs config.json   (config: url, chromium, workflow, screenshot, timeout_ms)
// Prints one JSON line: what the page did (prompt reply, the image shown on the Save Image node, /view responses).
"use strict";
const fs = require("fs");
const { chromium } = require("playwright-core");

const SAVE_NODE_ID = 9;

function shownImages(nodeId) {
  // The Save Image node's preview: litegraph keeps loaded <img> elements on `node.imgs`; the Vue node view and
  // the queue panel put real <img> elements in the DOM. Both point at /view.
  const node = window.app.graph.getNodeById(nodeId);
  const fromNode = ((node && node.imgs) || []).map((img) => ({
    where: "node", src: img.src, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
  }));
  const fromDom = [...document.querySelectorAll("img")].filter((img) => img.src.includes("/view?")).map((img) => ({
    where: "dom", src: img.src, complete: img.complete, width: img.naturalWidth, height: img.naturalHeight,
  }));
  return [...fromNode, ...fromDom].filter((img) => img.complete && img.width > 0);
}

async function main() {
  const config = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
  const timeout = config.timeout_ms;
  const result = { pageErrors: [], viewResponses: [], failedApi: [] };
  const browser = await chromium.launch({
    executablePath: config.chromium, headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  try {
    const page = await browser.newPage({ viewport: { width: 1600, height: 900 } });
    page.setDefaultTimeout(timeout);
    page.on("pageerror", (error) => result.pageErrors.push(String(error)));
    page.on("response", (response) => {
      const url = response.url();
      if (url.includes("/view?")) {
        result.viewResponses.push({ url, status: response.status(), type: response.headers()["content-type"] });
      } else if (url.startsWith(config.url) && response.status() >= 500) {
        result.failedApi.push({ url, status: response.status() });
      }
    });
    await page.goto(config.url, { waitUntil: "domcontentloaded" });
    await page.waitForFunction(() => window.app && window.app.graph && window.app.canvas);
    result.title = await page.title();

    await page.evaluate(async (workflow) => { await window.app.loadGraphData(workflow); }, config.workflow);
    result.loadedTypes = await page.evaluate(() => window.app.graph.nodes.map((n) => n.type).sort());

    const posted = page.waitForResponse((r) => r.url().endsWith("/api/prompt") && r.request().method() === "POST");
    await page.evaluate(() => window.app.queuePrompt(0));
    const reply = await posted;
    result.promptStatus = reply.status();
    result.promptReply = await reply.json();
    result.postedPrompt = JSON.parse(reply.request().postData()).prompt;

    await page.waitForFunction(`(${shownImages})(${SAVE_NODE_ID}).length > 0`);
    result.shown = await page.evaluate(shownImages, SAVE_NODE_ID);
    await page.keyboard.press("Escape"); // close any toast or dialog before the screenshot
    await page.waitForTimeout(500); // one more canvas frame with the image drawn
    await page.screenshot({ path: config.screenshot });
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(result) + "\n");
}

main().catch((error) => {
  process.stderr.write(String((error && error.stack) || error) + "\n");
  process.exit(1);
});
