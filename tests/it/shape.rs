//! The code base's shape, checked (issue #26): room sizes and which module may import which.
//!
//! How it works: starting at `src/lib.rs` the check follows every `mod x;` (and `#[path]`) to
//! each module file and parses it with `syn`. Test code is left out everywhere: items under
//! `#[cfg(test)]` or `#[test]`, and module files declared `#[cfg(test)] mod x;`. It then fails on
//! - a file over [`MAX_FILE_LINES`] lines (its lines minus those of inline test items), and any
//!   file of `src/cli/` over [`MAX_CLI_LINES`];
//! - a function or method over [`MAX_FN_LINES`] lines (from `fn` to its closing brace);
//! - an import between top-level modules of `src/` that goes upward in [`LAYERS`], or a cycle
//!   among modules of one layer, or a top-level module missing from [`LAYERS`]. An edge
//!   `a -> b` is any `crate::b...` path in `a`'s non-test code: `use` trees, paths in types and
//!   expressions, and `crate :: b` inside macro invocations (`super::` paths are resolved
//!   against the module's own path). Doc comments are not imports.
//!
//! [`KNOWN_OVER`] exempts files still over a size limit while their owners split them; an entry
//! that no longer needs the exemption fails the check too, so the list only shrinks.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use syn::visit::Visit;

/// Lines a source file may have, tests excepted.
const MAX_FILE_LINES: usize = 800;
/// Lines a file of `src/cli/` may have: a command parses, calls the library and prints.
const MAX_CLI_LINES: usize = 300;
/// Lines a function may have.
const MAX_FN_LINES: usize = 150;

/// Top-level modules of `src/`, lowest layer first. A module may import modules of lower layers
/// and, without a cycle, of its own layer; never of a higher one. The product path reads
/// bottom-up: helpers, the gradient compiler and model, the detector and runtime, alert
/// policies, sources, metrics, sinks, the pipeline, config and the service, then `setup`
/// (`gradwatch init`'s steps, which nothing of the daemon imports); the lab (`lab`) sits above
/// the product, which never imports it, and the CLI above everything.
const LAYERS: &[&[&str]] = &[
    &["base"],
    &["names", "rng", "frame", "ratelimit", "fleet", "onnx", "plot", "quality"],
    &["grad"],
    &["model", "data", "corrupt"],
    &["detector", "runtime"],
    &["alert"],
    &["source"],
    &["metrics"],
    &["sink"],
    &["snapshot"],
    &["pipeline"],
    &["config"],
    &["service"],
    &["setup"],
    &["lab"],
    &["cli"],
];

/// Files (or folders, ending in `/`) exempt from the size limits for now, with who is
/// splitting them. The lead empties this list as the branches merge.
const KNOWN_OVER: &[(&str, &str)] = &[];

/// One module file reached from `src/lib.rs`.
struct ModFile {
    path: PathBuf,
    /// Module path inside the crate (`["sink", "mqtt"]`); empty for the crate root.
    module: Vec<String>,
}

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn parse(path: &Path) -> syn::File {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn is_test_attr(attrs: &[syn::Attribute]) -> bool {
    attrs.iter().any(|a| {
        if a.path().is_ident("test") {
            return true;
        }
        if a.path().is_ident("cfg") {
            let mut test = false;
            let _ = a.parse_nested_meta(|m| {
                test |= m.path.is_ident("test");
                Ok(())
            });
            return test;
        }
        false
    })
}

fn path_attr(attrs: &[syn::Attribute]) -> Option<String> {
    attrs.iter().find(|a| a.path().is_ident("path")).and_then(|a| match &a.meta {
        syn::Meta::NameValue(nv) => match &nv.value {
            syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => Some(s.value()),
            _ => None,
        },
        _ => None,
    })
}

/// Every non-test module file of the library, following `mod x;` from `src/lib.rs`.
fn module_files() -> Vec<ModFile> {
    let mut out = Vec::new();
    let mut todo = vec![ModFile { path: src_dir().join("lib.rs"), module: Vec::new() }];
    while let Some(f) = todo.pop() {
        let ast = parse(&f.path);
        let name = f.path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // Children of `x/mod.rs` and `lib.rs` live beside them; of `x.rs`, in `x/`.
        let dir = if name == "mod.rs" || name == "lib.rs" {
            f.path.parent().unwrap().to_path_buf()
        } else {
            f.path.with_extension("")
        };
        collect_mods(&ast.items, &dir, &f.module, &mut todo);
        out.push(f);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn collect_mods(items: &[syn::Item], dir: &Path, module: &[String], todo: &mut Vec<ModFile>) {
    for item in items {
        let syn::Item::Mod(m) = item else { continue };
        if is_test_attr(&m.attrs) {
            continue;
        }
        let mut child = module.to_vec();
        child.push(m.ident.to_string());
        match &m.content {
            Some((_, items)) => collect_mods(items, &dir.join(m.ident.to_string()), &child, todo),
            None => {
                let path = match path_attr(&m.attrs) {
                    Some(p) => dir.parent().unwrap_or(dir).join(p),
                    None => {
                        let flat = dir.join(format!("{}.rs", m.ident));
                        if flat.exists() {
                            flat
                        } else {
                            dir.join(m.ident.to_string()).join("mod.rs")
                        }
                    }
                };
                todo.push(ModFile { path, module: child });
            }
        }
    }
}

/// Lines of the file that are not test code.
fn product_lines(path: &Path, ast: &syn::File) -> usize {
    let text = std::fs::read_to_string(path).unwrap();
    let total = text.lines().count();
    let test: usize = ast
        .items
        .iter()
        .filter(|i| is_test_attr(item_attrs(i)))
        .map(|i| {
            let span = syn::spanned::Spanned::span(i);
            span.end().line - span.start().line + 1
        })
        .sum();
    total - test
}

fn item_attrs(item: &syn::Item) -> &[syn::Attribute] {
    match item {
        syn::Item::Mod(m) => &m.attrs,
        syn::Item::Fn(f) => &f.attrs,
        syn::Item::Impl(i) => &i.attrs,
        syn::Item::Use(u) => &u.attrs,
        syn::Item::Struct(s) => &s.attrs,
        syn::Item::Const(c) => &c.attrs,
        _ => &[],
    }
}

/// Walks one file's non-test code: long functions and `crate::` edges.
struct Walker<'a> {
    module: &'a [String],
    long_fns: Vec<(String, usize)>,
    edges: BTreeSet<String>,
}

impl Walker<'_> {
    fn fn_len(&mut self, name: &syn::Ident, sig: &syn::Signature, block: &syn::Block) {
        let start = sig.fn_token.span.start().line;
        let end = block.brace_token.span.close().end().line;
        let len = end - start + 1;
        if len > MAX_FN_LINES {
            self.long_fns.push((name.to_string(), len));
        }
    }

    /// The top-level module a path starting with `first` names, if it leaves this one.
    fn edge(&mut self, segs: &[String]) {
        let target = match segs.first().map(String::as_str) {
            Some("crate") => segs.get(1).cloned(),
            Some("super") => {
                let ups = segs.iter().take_while(|s| *s == "super").count();
                if ups < self.module.len() {
                    // Still inside this top-level module.
                    None
                } else {
                    segs.get(ups).cloned()
                }
            }
            _ => None,
        };
        if let Some(t) = target {
            if self.module.first() != Some(&t) {
                self.edges.insert(t);
            }
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                prefix.push(n.ident.to_string());
                self.edge(prefix);
                prefix.pop();
            }
            syn::UseTree::Rename(r) => {
                prefix.push(r.ident.to_string());
                self.edge(prefix);
                prefix.pop();
            }
            syn::UseTree::Glob(_) => self.edge(prefix),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn tokens(&mut self, ts: proc_macro2::TokenStream) {
        let toks: Vec<proc_macro2::TokenTree> = ts.into_iter().collect();
        for (i, t) in toks.iter().enumerate() {
            match t {
                proc_macro2::TokenTree::Group(g) => self.tokens(g.stream()),
                proc_macro2::TokenTree::Ident(id) if id == "crate" => {
                    // `crate` `:` `:` `name`
                    if let Some(proc_macro2::TokenTree::Ident(next)) = toks.get(i + 3) {
                        let colons = toks[i + 1..i + 3]
                            .iter()
                            .all(|c| matches!(c, proc_macro2::TokenTree::Punct(p) if p.as_char() == ':'));
                        if colons {
                            self.edge(&["crate".to_string(), next.to_string()]);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

impl<'ast> Visit<'ast> for Walker<'_> {
    fn visit_item(&mut self, i: &'ast syn::Item) {
        if !is_test_attr(item_attrs(i)) {
            syn::visit::visit_item(self, i);
        }
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if is_test_attr(&f.attrs) {
            return;
        }
        self.fn_len(&f.sig.ident, &f.sig, &f.block);
        syn::visit::visit_item_fn(self, f);
    }

    fn visit_impl_item_fn(&mut self, f: &'ast syn::ImplItemFn) {
        if is_test_attr(&f.attrs) {
            return;
        }
        self.fn_len(&f.sig.ident, &f.sig, &f.block);
        syn::visit::visit_impl_item_fn(self, f);
    }

    fn visit_trait_item_fn(&mut self, f: &'ast syn::TraitItemFn) {
        if let Some(b) = &f.default {
            self.fn_len(&f.sig.ident, &f.sig, b);
        }
        syn::visit::visit_trait_item_fn(self, f);
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segs: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        self.edge(&segs);
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }

    fn visit_attribute(&mut self, _: &'ast syn::Attribute) {
        // Doc comments and attributes name no imports.
    }
}

fn known_over(rel: &str) -> Option<&'static str> {
    KNOWN_OVER.iter().find(|(p, _)| if p.ends_with('/') { rel.starts_with(p) } else { rel == *p }).map(|(p, _)| *p)
}

fn layer_of(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

#[test]
fn rooms_have_their_size_and_imports_go_down() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut problems = Vec::new();
    let mut exempt_used = BTreeSet::new();
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut files = module_files();
    files.push(ModFile { path: src_dir().join("main.rs"), module: vec!["main".into()] });
    for f in &files {
        let rel = f.path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
        let ast = parse(&f.path);
        let mut w = Walker { module: &f.module, long_fns: Vec::new(), edges: BTreeSet::new() };
        w.visit_file(&ast);
        let lines = product_lines(&f.path, &ast);
        let mut over = Vec::new();
        if lines > MAX_FILE_LINES {
            over.push(format!("{rel}: {lines} lines (limit {MAX_FILE_LINES})"));
        }
        if rel.starts_with("src/cli/") && lines > MAX_CLI_LINES {
            over.push(format!("{rel}: {lines} lines, a CLI file (limit {MAX_CLI_LINES})"));
        }
        for (name, len) in &w.long_fns {
            over.push(format!("{rel}: fn {name} is {len} lines (limit {MAX_FN_LINES})"));
        }
        match known_over(&rel) {
            Some(p) if !over.is_empty() => {
                exempt_used.insert(p);
            }
            _ => problems.extend(over),
        }
        if let Some(top) = f.module.first().filter(|t| *t != "main") {
            for to in w.edges {
                edges.entry(top.clone()).or_default().entry(to).or_default().insert(rel.clone());
            }
        }
    }
    for (p, owner) in KNOWN_OVER {
        if !exempt_used.contains(p) {
            problems.push(format!("KNOWN_OVER lists {p} ({owner}) but it is within the limits now: remove the entry"));
        }
    }
    let tops: BTreeSet<&String> = files.iter().filter_map(|f| f.module.first()).filter(|t| *t != "main").collect();
    for t in &tops {
        if layer_of(t).is_none() {
            problems.push(format!("src/{t} is in no layer: add it to LAYERS in tests/it/shape.rs"));
        }
    }
    for (from, tos) in &edges {
        for (to, where_) in tos {
            let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) else { continue };
            if b > a {
                problems.push(format!(
                    "upward import {from} -> {to} (in {})",
                    where_.iter().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(&edges) {
        problems.push(format!("import cycle: {}", cycle.join(" -> ")));
    }
    assert!(problems.is_empty(), "shape check failed:\n  {}", problems.join("\n  "));
}

/// A cycle among the module edges, as the list of modules around it.
fn find_cycle(edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>) -> Option<Vec<String>> {
    fn dfs(
        n: &str,
        edges: &BTreeMap<String, BTreeMap<String, BTreeSet<String>>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for to in edges.get(n).into_iter().flat_map(|t| t.keys()) {
            match state.get(to.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == to).unwrap_or(0);
                    let mut c = stack[i..].to_vec();
                    c.push(to.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = dfs(to, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = dfs(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The check itself can fail: an upward edge, a cycle and a long fn in hand-written code.
#[test]
fn the_shape_check_sees_what_it_should() {
    let src = "use crate::cli::x;\nfn f() { log::info!(\"{}\", crate::pipeline::y()); super::z(); }\n\
               #[cfg(test)]\nmod tests { use crate::eval::q; }\n/// [`crate::lab`]\nfn g() {}\n";
    let ast = syn::parse_file(src).unwrap();
    let module = vec!["alert".to_string(), "inner".to_string()];
    let mut w = Walker { module: &module, long_fns: Vec::new(), edges: BTreeSet::new() };
    w.visit_file(&ast);
    let got: Vec<&str> = w.edges.iter().map(String::as_str).collect();
    assert_eq!(got, ["cli", "pipeline"]);
    let long = format!("fn long() {{\n{}}}\n", "    let _ = 1;\n".repeat(MAX_FN_LINES));
    let ast = syn::parse_file(&long).unwrap();
    let mut w = Walker { module: &module, long_fns: Vec::new(), edges: BTreeSet::new() };
    w.visit_file(&ast);
    assert_eq!(w.long_fns, [("long".to_string(), MAX_FN_LINES + 2)]);
    let mut edges: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for (a, b) in [("a", "b"), ("b", "c"), ("c", "a")] {
        edges.entry(a.into()).or_default().entry(b.into()).or_default();
    }
    assert_eq!(find_cycle(&edges).unwrap(), ["a", "b", "c", "a"]);
}
