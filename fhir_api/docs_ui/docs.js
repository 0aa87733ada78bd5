// Starts Swagger UI on this server's own OpenAPI document. A file, not an inline script, so the page's
// Content-Security-Policy can forbid inline scripts; every URL is a path on this server.
"use strict";

(function () {
  var root = document.getElementById("swagger-ui");
  var ui = window.SwaggerUIBundle({
    domNode: root,
    url: root.dataset.specUrl, // "Try it out" then calls the origin the document came from: this server
    oauth2RedirectUrl: new URL(root.dataset.oauth2RedirectUrl, window.location.href).href,
    presets: [window.SwaggerUIBundle.presets.apis],
    plugins: [window.SwaggerUIBundle.plugins.DownloadUrl],
    layout: "BaseLayout",
    deepLinking: true,
    filter: true,
    displayRequestDuration: true,
    validatorUrl: null, // the default validator badge is an image from another host
    queryConfigEnabled: false, // ?url=... must not point the page at another document
    persistAuthorization: false, // tokens stay in memory, never in localStorage
    withCredentials: false,
  });
  // SMART App Launch requires PKCE for the authorization-code flow.
  ui.initOAuth({ usePkceWithAuthorizationCodeGrant: true, scopeSeparator: " " });
  window.ui = ui;
})();
