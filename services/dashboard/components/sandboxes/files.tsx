"use client";

// Copying files in and out of a sandbox: PUT /vms/{id}/files?path= writes the body as
// the file (parents made as needed), GET reads it back. Paths are absolute.

import { useRef, useState } from "react";
import { errorMessage } from "@/lib/api";
import { useApi } from "@/lib/session";
import { formatBytes, fullTime } from "@/lib/format";
import type { FileInfo, UploadResponse } from "@/lib/types";
import { Button, Card, ErrorBanner, Field, Input } from "@/components/ui";

/**
 * Where an upload goes: a path ending in "/" (or empty) is a directory, and the
 * file keeps its own name there.
 */
export function uploadTarget(path: string, fileName: string): string {
  const p = path.trim() || "/tmp/";
  return p.endsWith("/") ? `${p}${fileName}` : p;
}

function checkPath(path: string): string | null {
  if (!path.startsWith("/")) return "The path must be absolute (start with /).";
  return null;
}

export function FilesPanel({ vmId, vmRunning }: { vmId: string; vmRunning: boolean }) {
  const api = useApi();
  const base = `/vms/${encodeURIComponent(vmId)}/files`;
  const fileInput = useRef<HTMLInputElement>(null);
  const [uploadPath, setUploadPath] = useState("/tmp/");
  const [uploading, setUploading] = useState(false);
  const [uploadError, setUploadError] = useState<string | null>(null);
  const [uploaded, setUploaded] = useState<{ answer: UploadResponse; info: FileInfo | null } | null>(null);
  const [downloadPath, setDownloadPath] = useState("");
  const [downloading, setDownloading] = useState(false);
  const [downloadError, setDownloadError] = useState<string | null>(null);

  // Choosing a file uploads it at once to the path above.
  const upload = async (file: File) => {
    const target = uploadTarget(uploadPath, file.name);
    const bad = checkPath(target);
    setUploadError(bad);
    setUploaded(null);
    if (bad) return;
    setUploading(true);
    try {
      const answer = await api.put<UploadResponse>(base, file, { path: target });
      // The stat is extra detail: a failure there does not undo the upload.
      const info = await api.get<FileInfo>(`${base}/stat`, { path: answer.path }).catch(() => null);
      setUploaded({ answer, info });
    } catch (e) {
      setUploadError(errorMessage(e));
    } finally {
      setUploading(false);
      // The same file may be chosen again (after fixing the path, say).
      if (fileInput.current) fileInput.current.value = "";
    }
  };

  const download = async (e: React.FormEvent) => {
    e.preventDefault();
    const path = downloadPath.trim();
    const bad = checkPath(path);
    setDownloadError(bad);
    if (bad) return;
    setDownloading(true);
    try {
      const response = await api.fetchResponse(base, { query: { path } });
      const blob = await response.blob();
      const url = URL.createObjectURL(blob);
      const a = document.createElement("a");
      a.href = url;
      a.download = path.split("/").filter(Boolean).pop() ?? "download";
      document.body.appendChild(a);
      a.click();
      a.remove();
      // Let the browser start the download before the blob goes away.
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
    } catch (err) {
      setDownloadError(errorMessage(err));
    } finally {
      setDownloading(false);
    }
  };

  return (
    <div className="grid grid-cols-1 gap-3 lg:grid-cols-2">
      {!vmRunning && (
        <p className="text-sm text-muted-fg lg:col-span-2">Files can be copied only while the sandbox is RUNNING.</p>
      )}
      <Card title="Upload a file">
        <div className="flex flex-col gap-3">
          <ErrorBanner error={uploadError} onDismiss={() => setUploadError(null)} />
          <Field label="Destination" hint="A directory ending in / keeps the file's name; otherwise the exact path. Parents are made as needed.">
            {(id) => (
              <Input
                id={id}
                data-testid="upload-path"
                className="font-mono"
                value={uploadPath}
                onChange={(e) => setUploadPath(e.target.value)}
                spellCheck={false}
                autoComplete="off"
              />
            )}
          </Field>
          <Field label="File" hint="It is uploaded as soon as you pick it.">
            {(id) => (
              <input
                id={id}
                ref={fileInput}
                type="file"
                data-testid="upload-input"
                disabled={uploading || !vmRunning}
                onChange={(e) => {
                  const file = e.target.files?.[0];
                  if (file) void upload(file);
                }}
                className="text-sm file:mr-3 file:h-9 file:rounded-md file:border file:border-border file:bg-card file:px-3 file:text-sm file:text-fg hover:file:bg-muted disabled:opacity-50"
              />
            )}
          </Field>
          {uploading && <p className="text-sm text-muted-fg">Uploading…</p>}
          {uploaded && (
            <div className="rounded-md border border-border bg-muted/50 p-3 text-sm" role="status">
              <p className="font-medium">
                Uploaded <span className="font-mono">{uploaded.answer.path}</span>
              </p>
              <p className="text-muted-fg">{formatBytes(uploaded.answer.size)} written.</p>
              {uploaded.info && (
                <dl className="mt-2 grid grid-cols-[auto_1fr] gap-x-3 gap-y-0.5 font-mono text-xs">
                  <dt className="text-muted-fg">permissions</dt>
                  <dd>{uploaded.info.permissions}</dd>
                  <dt className="text-muted-fg">owner</dt>
                  <dd>
                    {uploaded.info.owner}:{uploaded.info.group}
                  </dd>
                  <dt className="text-muted-fg">size</dt>
                  <dd>{uploaded.info.size} bytes</dd>
                  {uploaded.info.modified_at && (
                    <>
                      <dt className="text-muted-fg">modified</dt>
                      <dd>{fullTime(uploaded.info.modified_at)}</dd>
                    </>
                  )}
                </dl>
              )}
            </div>
          )}
        </div>
      </Card>
      <Card title="Download a file">
        <form onSubmit={download} className="flex flex-col gap-3" aria-label="Download a file">
          <ErrorBanner error={downloadError} onDismiss={() => setDownloadError(null)} />
          <Field label="Path in the sandbox">
            {(id) => (
              <Input
                id={id}
                data-testid="download-path"
                className="font-mono"
                placeholder="/etc/os-release"
                value={downloadPath}
                onChange={(e) => setDownloadPath(e.target.value)}
                spellCheck={false}
                autoComplete="off"
              />
            )}
          </Field>
          <div>
            <Button type="submit" data-testid="download-button" busy={downloading} disabled={!vmRunning || !downloadPath.trim()}>
              Download
            </Button>
          </div>
        </form>
      </Card>
    </div>
  );
}
