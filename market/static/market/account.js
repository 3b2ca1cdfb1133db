// The account page: everything is server-rendered; this only offers to copy a new key and tells the tests the page
// is ready (it opens no socket).
const key = document.getElementById("token-new");
const copy = document.getElementById("token-copy");
if (key && copy && navigator.clipboard) {
  copy.hidden = false;
  copy.onclick = async () => {
    try {
      await navigator.clipboard.writeText(key.textContent.trim());
      copy.textContent = "Copied";
    } catch {
      copy.textContent = "Copy failed: select the key";
    }
  };
}
document.body.dataset.ready = "1";
