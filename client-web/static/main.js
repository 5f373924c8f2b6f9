// Loads the WebAssembly client (server/build.rs points the import at the
// content-hashed glue). The client takes over the page from its start
// function; this only reports a failure to load.
import init from "./client_web.js";

init().catch((err) => {
  const status = document.getElementById("status");
  if (status) {
    status.textContent = "failed to load";
  }
  console.error("broadcast client failed to load:", err);
});
