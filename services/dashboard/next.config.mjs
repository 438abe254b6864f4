// A static export (out/): the gateway serves it at `/`, so no Node.js process runs
// in production. Pages with an id take it from the query string (`?id=`), because a
// static export cannot know ids at build time.
/** @type {import('next').NextConfig} */
const nextConfig = {
  output: "export",
  trailingSlash: true,
  reactStrictMode: true,
  images: { unoptimized: true },
  // The build runs type checking itself (`npm run typecheck`); lint is not part of it.
  eslint: { ignoreDuringBuilds: true },
};

export default nextConfig;
