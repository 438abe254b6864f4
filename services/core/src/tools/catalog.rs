//! The tool catalog: recipes (one TOML file per tool), the mirrors their downloads
//! come from, and plans (which tools to install, in which order, with their
//! scripts rendered).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ToolError;
use super::spec::{Arch, ToolSpec, check_name, check_version};
use super::template::render;

/// The built-in recipes, embedded so the binary needs no files at run time.
const BUILTIN: &[(&str, &str)] = &[
    (
        "ampcode",
        include_str!("../../../../tools/catalog/ampcode.toml"),
    ),
    ("bun", include_str!("../../../../tools/catalog/bun.toml")),
    (
        "claude-code",
        include_str!("../../../../tools/catalog/claude-code.toml"),
    ),
    (
        "docker",
        include_str!("../../../../tools/catalog/docker.toml"),
    ),
    ("git", include_str!("../../../../tools/catalog/git.toml")),
    ("go", include_str!("../../../../tools/catalog/go.toml")),
    (
        "nodejs",
        include_str!("../../../../tools/catalog/nodejs.toml"),
    ),
    (
        "python",
        include_str!("../../../../tools/catalog/python.toml"),
    ),
    ("rust", include_str!("../../../../tools/catalog/rust.toml")),
    ("uv", include_str!("../../../../tools/catalog/uv.toml")),
];

/// Default per-tool time limit when a recipe does not set one.
const DEFAULT_TIMEOUT_SECONDS: u64 = 600;
/// Longest time limit a recipe may set (a day).
const MAX_TIMEOUT_SECONDS: u64 = 24 * 60 * 60;

/// One tool's recipe, as written in its TOML file (`docs/tools.md`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    pub description: String,
    /// What `name` alone installs; `latest` where the package source decides.
    pub default_version: String,
    /// Tools installed first (by name; each at the version the request asks for,
    /// else its default).
    #[serde(default)]
    pub requires: Vec<String>,
    /// Shell script that exits 0 when the tool is present at `{version}`.
    pub verify: String,
    /// Shell script (after the installer's prelude) that installs `{version}`.
    pub install: String,
    /// Bound on verify + install + verify, after which everything is killed.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u64,
    /// Named download URL templates, available to the scripts as `{source.<name>}`.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    /// Mirror name → default base URL (`{mirror.<name>}`), overridden by
    /// [`ToolSources`].
    #[serde(default)]
    pub mirrors: BTreeMap<String, String>,
    /// Source name → URL template of the file where the publisher lists the
    /// SHA-256 sums of its downloads (`SHASUMS256.txt`, `<file>.sha256`).
    /// Rendered like the sources; `{source.<name>}` may be used too.
    #[serde(default)]
    pub checksums: BTreeMap<String, String>,
    /// Pinned sums, trusted over any sums file: `"<source>@<version>/<arch>"` →
    /// lowercase hex SHA-256 (`arch` as `uname -m`: `x86_64`, `aarch64`).
    #[serde(default)]
    pub sha256: BTreeMap<String, String>,
}

fn default_timeout_seconds() -> u64 {
    DEFAULT_TIMEOUT_SECONDS
}

/// Mirror overrides: mirror name → base URL, replacing the recipes' defaults (a
/// site's proxy or offline mirror). URLs may carry credentials: `Debug` hides them,
/// and errors name the mirror, never its URL.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ToolSources(BTreeMap<String, String>);

impl ToolSources {
    pub fn new() -> ToolSources {
        ToolSources::default()
    }

    /// Sets mirror `name` to `base_url`, checked as [`Catalog::check_sources`] does
    /// (but without knowing the catalog's mirror names).
    pub fn insert(
        &mut self,
        name: impl Into<String>,
        base_url: impl Into<String>,
    ) -> Result<(), ToolError> {
        let name = name.into();
        let url = check_mirror_url(&name, &base_url.into())?;
        self.0.insert(name, url);
        Ok(())
    }

    /// [`ToolSources::insert`], chained.
    pub fn with(
        mut self,
        name: impl Into<String>,
        base_url: impl Into<String>,
    ) -> Result<ToolSources, ToolError> {
        self.insert(name, base_url)?;
        Ok(self)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The effective base URL of mirror `name` for a recipe that declares it with
    /// `default`: the override, checked and without a trailing `/`, else the default.
    fn resolve(&self, name: &str, default: &str) -> Result<String, ToolError> {
        match self.0.get(name) {
            Some(url) => check_mirror_url(name, url),
            None => Ok(default.trim_end_matches('/').to_string()),
        }
    }
}

/// From the configuration's `workspaces.tool_mirrors`, every entry checked.
impl TryFrom<BTreeMap<String, String>> for ToolSources {
    type Error = ToolError;

    fn try_from(map: BTreeMap<String, String>) -> Result<Self, Self::Error> {
        let mut sources = ToolSources::new();
        for (name, url) in map {
            sources.insert(name, url)?;
        }
        Ok(sources)
    }
}

impl fmt::Debug for ToolSources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(name, url)| (name, redact_userinfo(url))),
            )
            .finish()
    }
}

/// A URL with its `user:password@` part replaced by `***@`.
fn redact_userinfo(url: &str) -> String {
    match userinfo(url) {
        Some(info) => url.replacen(&format!("{info}@"), "***@", 1),
        None => url.to_string(),
    }
}

/// The `user:password` of `scheme://user:password@host/...`, if any.
fn userinfo(url: &str) -> Option<&str> {
    let after_scheme = &url[url.find("://")? + 3..];
    let authority = after_scheme.split('/').next().unwrap_or_default();
    authority.rfind('@').map(|at| &authority[..at])
}

/// A base URL safe to render into shell scripts inside double quotes: http(s) or
/// file, no whitespace, quotes, `$`, backticks or backslashes. Returned without
/// its trailing `/`.
fn check_mirror_url(name: &str, url: &str) -> Result<String, ToolError> {
    let invalid = |reason: &str| ToolError::InvalidMirror {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    check_key_part(name).map_err(|r| invalid(&r))?;
    let url = url.trim().trim_end_matches('/');
    let rest = ["http://", "https://", "file://"]
        .iter()
        .find_map(|scheme| url.strip_prefix(scheme))
        .ok_or_else(|| invalid("the base URL must start with http://, https:// or file://"))?;
    if rest.is_empty() {
        return Err(invalid("the base URL has no host or path"));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'`$\\".contains(c))
    {
        return Err(invalid(
            "the base URL may not contain whitespace, quotes, '$', '`' or '\\'",
        ));
    }
    Ok(url.to_string())
}

/// A mirror or source name: usable as `{mirror.<name>}`.
fn check_key_part(name: &str) -> Result<(), String> {
    let valid = name.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name (a lowercase letter, then lowercase letters, digits, '_' and '-')"
        ))
    }
}

/// Every tool the platform knows how to install.
#[derive(Debug, Clone)]
pub struct Catalog {
    recipes: BTreeMap<String, Recipe>,
}

impl Catalog {
    /// The built-in recipes only.
    pub fn builtin() -> Result<Catalog, ToolError> {
        Catalog::load(None)
    }

    /// The built-in recipes, then every `*.toml` file of `extra_dir` (a site's own
    /// tools; one named like a built-in replaces it). Each file must be named after
    /// its tool (`hello.toml` for `name = "hello"`).
    pub fn load(extra_dir: Option<&Path>) -> Result<Catalog, ToolError> {
        let mut recipes = BTreeMap::new();
        for (name, text) in BUILTIN {
            let recipe = parse_recipe(&format!("built-in {name}.toml"), name, text)?;
            recipes.insert(recipe.name.clone(), recipe);
        }
        if let Some(dir) = extra_dir {
            for (origin, stem, text) in read_catalog_dir(dir)? {
                let recipe = parse_recipe(&origin, &stem, &text)?;
                if recipes.contains_key(&recipe.name) {
                    tracing::info!(tool = %recipe.name, file = %origin, "site recipe replaces the built-in one");
                }
                recipes.insert(recipe.name.clone(), recipe);
            }
        }
        let catalog = Catalog { recipes };
        catalog.check_consistency()?;
        Ok(catalog)
    }

    /// The names of every tool, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.recipes.keys().map(String::as_str).collect()
    }

    pub fn get(&self, name: &str) -> Option<&Recipe> {
        self.recipes.get(name)
    }

    pub fn recipes(&self) -> impl Iterator<Item = &Recipe> {
        self.recipes.values()
    }

    /// Every mirror the recipes use, with its default base URL.
    pub fn mirrors(&self) -> BTreeMap<&str, &str> {
        self.recipes
            .values()
            .flat_map(|r| r.mirrors.iter())
            .map(|(name, url)| (name.as_str(), url.as_str()))
            .collect()
    }

    /// Checks overrides against the catalog: each must name a mirror some recipe
    /// uses (a typo would otherwise silently leave the default in place) and be a
    /// usable base URL. For start-up validation of the configuration.
    pub fn check_sources(&self, sources: &ToolSources) -> Result<(), ToolError> {
        let mirrors = self.mirrors();
        for (name, url) in &sources.0 {
            if !mirrors.contains_key(name.as_str()) {
                return Err(ToolError::InvalidMirror {
                    name: name.clone(),
                    reason: format!(
                        "no recipe uses this mirror; known mirrors: {}",
                        mirrors.keys().copied().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            check_mirror_url(name, url)?;
        }
        Ok(())
    }

    fn recipe(&self, name: &str) -> Result<&Recipe, ToolError> {
        self.recipes
            .get(name)
            .ok_or_else(|| ToolError::UnknownTool {
                name: name.to_string(),
                known: self.recipes.keys().cloned().collect(),
            })
    }

    /// What installing `specs` takes: every tool and its requirements, dependencies
    /// first (otherwise in the order asked), scripts rendered for `arch` with the
    /// mirrors of `sources`. Nothing runs yet; every input error surfaces here.
    pub fn plan(
        &self,
        specs: &[ToolSpec],
        sources: &ToolSources,
        arch: Arch,
    ) -> Result<InstallPlan, ToolError> {
        let mut asked: BTreeMap<&str, Option<&str>> = BTreeMap::new();
        for spec in specs {
            check_name(&spec.name).map_err(|reason| ToolError::InvalidSpec {
                spec: spec.to_string(),
                reason,
            })?;
            if let Some(version) = &spec.version {
                check_version(version).map_err(|reason| ToolError::InvalidSpec {
                    spec: spec.to_string(),
                    reason,
                })?;
            }
            self.recipe(&spec.name)?;
            let version = spec.version.as_deref();
            match asked.insert(&spec.name, version) {
                Some(previous) if previous != version => {
                    return Err(ToolError::InvalidSpec {
                        spec: spec.to_string(),
                        reason: format!("{} is asked for twice, at different versions", spec.name),
                    });
                }
                _ => {}
            }
        }
        let roots: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        let order =
            dependency_order(&roots, &self.graph()).map_err(|cycle| ToolError::Cycle { cycle })?;
        let tools = order
            .into_iter()
            .map(|name| {
                let recipe = self.recipe(&name)?;
                let version = asked
                    .get(name.as_str())
                    .copied()
                    .flatten()
                    .unwrap_or(&recipe.default_version);
                let mut tool = render_tool(recipe, version, arch, sources)?;
                tool.requested = asked.contains_key(name.as_str());
                Ok(tool)
            })
            .collect::<Result<_, ToolError>>()?;
        Ok(InstallPlan { tools })
    }

    fn graph(&self) -> BTreeMap<&str, Vec<&str>> {
        self.recipes
            .iter()
            .map(|(name, r)| {
                (
                    name.as_str(),
                    r.requires.iter().map(String::as_str).collect(),
                )
            })
            .collect()
    }

    /// What holds across recipes: requirements name known tools and do not loop, and
    /// a mirror has one default wherever it is declared.
    fn check_consistency(&self) -> Result<(), ToolError> {
        let mut mirror_defaults: BTreeMap<&str, (&str, &str)> = BTreeMap::new();
        for recipe in self.recipes.values() {
            for required in &recipe.requires {
                if !self.recipes.contains_key(required) {
                    return Err(ToolError::InvalidRecipe {
                        origin: recipe.name.clone(),
                        reason: format!("requires unknown tool {required:?}"),
                    });
                }
            }
            for (mirror, url) in &recipe.mirrors {
                if let Some((other, other_url)) =
                    mirror_defaults.insert(mirror, (&recipe.name, url))
                    && other_url.trim_end_matches('/') != url.trim_end_matches('/')
                {
                    return Err(ToolError::InvalidRecipe {
                        origin: recipe.name.clone(),
                        reason: format!(
                            "mirror {mirror:?} has a different default here than in {other}"
                        ),
                    });
                }
            }
        }
        let all: Vec<&str> = self.recipes.keys().map(String::as_str).collect();
        dependency_order(&all, &self.graph()).map_err(|cycle| ToolError::Cycle { cycle })?;
        Ok(())
    }
}

/// The `*.toml` files of a site catalog directory, sorted: (origin, stem, text).
fn read_catalog_dir(dir: &Path) -> Result<Vec<(String, String, String)>, ToolError> {
    let unreadable = |e: std::io::Error| ToolError::Catalog {
        path: dir.display().to_string(),
        reason: e.to_string(),
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        let path = entry.map_err(unreadable)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| ToolError::Catalog {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        files.push((path.display().to_string(), stem, text));
    }
    files.sort();
    Ok(files)
}

/// Parses and checks one recipe on its own: fields, names, default mirror URLs, and
/// that every template renders for its default version on every architecture.
fn parse_recipe(origin: &str, file_stem: &str, text: &str) -> Result<Recipe, ToolError> {
    let invalid = |reason: String| ToolError::InvalidRecipe {
        origin: origin.to_string(),
        reason,
    };
    let recipe: Recipe = toml::from_str(text).map_err(|e| invalid(e.to_string()))?;
    check_name(&recipe.name).map_err(invalid)?;
    if recipe.name != file_stem {
        return Err(invalid(format!(
            "the file of tool {:?} must be named {}.toml",
            recipe.name, recipe.name
        )));
    }
    if recipe.description.trim().is_empty() {
        return Err(invalid("description is empty".into()));
    }
    check_version(&recipe.default_version).map_err(|r| invalid(format!("default_version: {r}")))?;
    if !(1..=MAX_TIMEOUT_SECONDS).contains(&recipe.timeout_seconds) {
        return Err(invalid(format!(
            "timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS}"
        )));
    }
    if recipe.verify.trim().is_empty() || recipe.install.trim().is_empty() {
        return Err(invalid("verify and install must both be set".into()));
    }
    let mut seen = BTreeSet::new();
    for required in &recipe.requires {
        check_name(required).map_err(|r| invalid(format!("requires: {r}")))?;
        if required == &recipe.name || !seen.insert(required) {
            return Err(invalid(format!(
                "requires {required:?} twice or requires itself"
            )));
        }
    }
    for name in recipe.sources.keys() {
        check_key_part(name).map_err(|r| invalid(format!("sources: {r}")))?;
    }
    for (name, url) in &recipe.mirrors {
        check_mirror_url(name, url).map_err(|e| invalid(e.to_string()))?;
    }
    check_checksums(&recipe).map_err(invalid)?;
    for arch in [Arch::X86_64, Arch::Aarch64] {
        render_tool(&recipe, &recipe.default_version, arch, &ToolSources::new())
            .map_err(|e| invalid(e.to_string()))?;
    }
    Ok(recipe)
}

/// How a recipe's checksums hold together: sums files only for its sources, pins
/// well formed and for its sources, and every source verifiable one way or the
/// other (every download is checked: `fetch` refuses a URL it has no sum for).
fn check_checksums(recipe: &Recipe) -> Result<(), String> {
    for name in recipe.checksums.keys() {
        if !recipe.sources.contains_key(name) {
            return Err(format!("checksums: {name:?} is not one of the sources"));
        }
    }
    for (key, sum) in &recipe.sha256 {
        let pin = PinKey::parse(key).ok_or_else(|| {
            format!("sha256: {key:?} is not \"<source>@<version>/<arch>\" (arch x86_64 or aarch64)")
        })?;
        if !recipe.sources.contains_key(pin.source) {
            return Err(format!("sha256: {key:?} names no source of the recipe"));
        }
        check_version(pin.version).map_err(|r| format!("sha256: {key:?}: {r}"))?;
        if sum.len() != 64
            || !sum
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(format!("sha256: {key:?} is not 64 lowercase hex digits"));
        }
    }
    for name in recipe.sources.keys() {
        let pinned = recipe
            .sha256
            .keys()
            .filter_map(|k| PinKey::parse(k))
            .any(|pin| pin.source == name);
        if !pinned && !recipe.checksums.contains_key(name) {
            return Err(format!(
                "source {name:?} has no checksum: give its publisher's sums file under [checksums] or pin versions under [sha256]"
            ));
        }
    }
    Ok(())
}

/// A `[sha256]` key: `<source>@<version>/<arch>`.
struct PinKey<'a> {
    source: &'a str,
    version: &'a str,
    arch: Arch,
}

impl<'a> PinKey<'a> {
    fn parse(key: &'a str) -> Option<PinKey<'a>> {
        let (source, rest) = key.split_once('@')?;
        let (version, arch) = rest.rsplit_once('/')?;
        let arch = [Arch::X86_64, Arch::Aarch64]
            .into_iter()
            .find(|a| a.uname() == arch)?;
        Some(PinKey {
            source,
            version,
            arch,
        })
    }
}

/// How a download is checked before anything uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadCheck {
    /// The SHA-256 the recipe pins for this version and architecture.
    Pinned(String),
    /// The sum listed for the file's name in this sums file (fetched at install
    /// time, from the same mirror unless the recipe says otherwise).
    SumsFile(String),
}

/// What installing one tool takes, scripts rendered.
#[derive(Clone)]
pub struct PlannedTool {
    pub name: String,
    pub version: String,
    /// Asked for by the request (not only pulled in as a requirement).
    pub requested: bool,
    pub timeout: Duration,
    pub(super) verify: String,
    pub(super) install: String,
    /// Every URL the install may `fetch`, with how its download is checked.
    pub(super) downloads: BTreeMap<String, DownloadCheck>,
    /// Mirror credentials, cut from any output before it is kept.
    pub(super) secrets: Vec<String>,
}

impl PlannedTool {
    /// The rendered `verify` script.
    pub fn verify_script(&self) -> &str {
        &self.verify
    }

    /// The rendered `install` script (without the installer's prelude). May hold
    /// mirror credentials: never log it.
    pub fn install_script(&self) -> &str {
        &self.install
    }

    /// Each URL the install may download, with how the download is checked.
    pub fn downloads(&self) -> &BTreeMap<String, DownloadCheck> {
        &self.downloads
    }

    /// The shell function the prelude's `fetch` asks for a URL's expected sum:
    /// `sha256 <hex>`, `sums <url of a sums file>`, or `none` (then `fetch`
    /// refuses the download). URLs are safe inside double quotes (checked when
    /// rendered).
    pub(super) fn expected_sha256_function(&self) -> String {
        let mut function = String::from("expected_sha256() {\n  case \"$1\" in\n");
        for (url, check) in &self.downloads {
            let answer = match check {
                DownloadCheck::Pinned(sum) => format!("sha256 {sum}"),
                DownloadCheck::SumsFile(sums) => format!("sums {sums}"),
            };
            function.push_str(&format!("    \"{url}\") echo \"{answer}\" ;;\n"));
        }
        function.push_str("    *) echo none ;;\n  esac\n}\n");
        function
    }
}

/// The scripts are left out: they may hold mirror credentials.
impl fmt::Debug for PlannedTool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlannedTool")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("requested", &self.requested)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The tools to install, dependencies first ([`Catalog::plan`]).
#[derive(Debug, Clone, Default)]
pub struct InstallPlan {
    tools: Vec<PlannedTool>,
}

impl InstallPlan {
    pub fn tools(&self) -> &[PlannedTool] {
        &self.tools
    }

    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }
}

/// Renders a recipe's sources and scripts for one version and architecture.
fn render_tool(
    recipe: &Recipe,
    version: &str,
    arch: Arch,
    sources: &ToolSources,
) -> Result<PlannedTool, ToolError> {
    let invalid = |reason: String| ToolError::InvalidRecipe {
        origin: recipe.name.clone(),
        reason,
    };
    let mut mirrors = BTreeMap::new();
    for (name, default) in &recipe.mirrors {
        mirrors.insert(name.as_str(), sources.resolve(name, default)?);
    }
    let base = |key: &str| -> Option<String> {
        if key == "version" {
            return Some(version.to_string());
        }
        if key == "arch" {
            return Some(arch.uname().to_string());
        }
        let (kind, name) = key.split_once('.')?;
        match kind {
            "arch" => arch.variant(name).map(str::to_string),
            "mirror" => mirrors.get(name).cloned(),
            _ => None,
        }
    };
    let mut urls = BTreeMap::new();
    for (name, template) in &recipe.sources {
        let url = render(template, base).map_err(|e| invalid(format!("source {name}: {e}")))?;
        check_rendered_url(&url).map_err(|r| invalid(format!("source {name}: {r}")))?;
        urls.insert(name.as_str(), url);
    }
    let script_vars = |key: &str| match key.split_once('.') {
        Some(("source", name)) => urls.get(name).cloned(),
        _ => base(key),
    };
    let mut downloads = BTreeMap::new();
    for (name, url) in &urls {
        let pin = recipe.sha256.iter().find_map(|(key, sum)| {
            let pin = PinKey::parse(key)?;
            (pin.source == *name && pin.version == version && pin.arch == arch).then_some(sum)
        });
        // Rendered even where a pin wins, so a broken template shows when the
        // catalog loads rather than at the first unpinned version.
        let sums = match recipe.checksums.get(*name) {
            Some(template) => {
                let sums = render(template, script_vars)
                    .map_err(|e| invalid(format!("checksums {name}: {e}")))?;
                check_rendered_url(&sums).map_err(|r| invalid(format!("checksums {name}: {r}")))?;
                Some(sums)
            }
            None => None,
        };
        let check = match (pin, sums) {
            (Some(sum), _) => DownloadCheck::Pinned(sum.clone()),
            (None, Some(sums)) => DownloadCheck::SumsFile(sums),
            (None, None) => {
                return Err(ToolError::InvalidSpec {
                    spec: format!("{}@{version}", recipe.name),
                    reason: format!(
                        "no checksum is known for this version on {}: the recipe pins only other versions and names no sums file",
                        arch.uname()
                    ),
                });
            }
        };
        downloads.insert(url.clone(), check);
    }
    let verify =
        render(&recipe.verify, script_vars).map_err(|e| invalid(format!("verify: {e}")))?;
    let install =
        render(&recipe.install, script_vars).map_err(|e| invalid(format!("install: {e}")))?;
    let secrets = mirrors
        .values()
        .filter_map(|url| userinfo(url))
        .flat_map(|info| {
            // The whole `user:password`, and the password alone (tools that print
            // URLs tend to drop the user part, or percent-decode it).
            let password = info.split_once(':').map(|(_, p)| p.to_string());
            std::iter::once(info.to_string()).chain(password)
        })
        .filter(|s| !s.is_empty())
        .collect();
    Ok(PlannedTool {
        name: recipe.name.clone(),
        version: version.to_string(),
        requested: false,
        timeout: Duration::from_secs(recipe.timeout_seconds),
        verify,
        install,
        downloads,
        secrets,
    })
}

/// A rendered download URL goes into shell scripts inside double quotes: no
/// whitespace, quotes, `$`, backticks or backslashes (a recipe's own text is
/// checked here; mirrors and versions are checked before).
fn check_rendered_url(url: &str) -> Result<(), String> {
    if url
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'`$\\".contains(c))
    {
        // Not the URL itself: it may carry a mirror's credentials.
        return Err("the rendered URL may not contain whitespace, quotes, '$', '`' or '\\'".into());
    }
    Ok(())
}

/// `roots` and what they require, each after its requirements (depth first, in the
/// order given). `Err` holds a cycle, its first name repeated at the end.
fn dependency_order(
    roots: &[&str],
    graph: &BTreeMap<&str, Vec<&str>>,
) -> Result<Vec<String>, Vec<String>> {
    #[derive(PartialEq)]
    enum Mark {
        InProgress,
        Done,
    }
    fn visit<'a>(
        name: &'a str,
        graph: &BTreeMap<&str, Vec<&'a str>>,
        marks: &mut BTreeMap<&'a str, Mark>,
        path: &mut Vec<&'a str>,
        order: &mut Vec<String>,
    ) -> Result<(), Vec<String>> {
        match marks.get(name) {
            Some(Mark::Done) => return Ok(()),
            Some(Mark::InProgress) => {
                let start = path.iter().position(|n| *n == name).unwrap_or_default();
                let mut cycle: Vec<String> = path[start..].iter().map(|n| n.to_string()).collect();
                cycle.push(name.to_string());
                return Err(cycle);
            }
            None => {}
        }
        marks.insert(name, Mark::InProgress);
        path.push(name);
        for required in graph.get(name).into_iter().flatten() {
            visit(required, graph, marks, path, order)?;
        }
        path.pop();
        marks.insert(name, Mark::Done);
        order.push(name.to_string());
        Ok(())
    }
    let mut marks = BTreeMap::new();
    let mut order = Vec::new();
    for root in roots {
        visit(root, graph, &mut marks, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

#[cfg(test)]
mod tests;
