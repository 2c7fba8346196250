// Starts Swagger UI on /docs. A file rather than an inline script, so the docs page passes the
// server's Content-Security-Policy (script-src 'self'); the options are FastAPI's defaults.
"use strict";

window.ui = SwaggerUIBundle({
  url: "/openapi.json",
  dom_id: "#swagger-ui",
  layout: "BaseLayout",
  deepLinking: true,
  showExtensions: true,
  showCommonExtensions: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
});
