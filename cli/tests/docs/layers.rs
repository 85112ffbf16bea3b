//! The master's layer table in `ARCHITECTURE.md` against the `use crate::…` imports
//! of its modules: a module may import modules of its own row or of rows above it.

/// The table's rows, top (the bottom layer) first: each row's module names.
pub fn master_layers(doc: &str) -> Vec<Vec<String>> {
    let Some(start) = doc.find("**master/src**") else {
        return Vec::new();
    };
    doc[start..]
        .lines()
        .skip_while(|line| !line.starts_with('|'))
        .take_while(|line| line.starts_with('|'))
        .skip(2) // header and separator
        .filter_map(|line| line.split('|').nth(1))
        .map(|cell| {
            cell.split('`')
                .skip(1)
                .step_by(2)
                .map(|name| name.trim_end_matches('/').to_owned())
                .collect()
        })
        .collect()
}

/// The imports of `sources` (master file path, text) that reach a lower row.
pub fn check(layers: &[Vec<String>], sources: &[(String, String)]) -> Vec<String> {
    let row_of = |module: &str| {
        layers
            .iter()
            .position(|row| row.iter().any(|name| name == module))
    };
    let mut problems = Vec::new();
    for (path, text) in sources {
        let module = module_of(path);
        let Some(own_row) = row_of(&module) else {
            if module != "main" {
                problems.push(format!(
                    "{path}: module `{module}` is not in the layer table"
                ));
            }
            continue;
        };
        for imported in crate_imports(text) {
            match row_of(&imported) {
                Some(row) if row > own_row => problems.push(format!(
                    "{path}: `{module}` imports `crate::{imported}`, a module below it in the table"
                )),
                _ => {}
            }
        }
    }
    problems
}

/// `master/src/cluster/view.rs` → `cluster`; `master/src/api.rs` → `api`.
fn module_of(path: &str) -> String {
    let inside = path.trim_start_matches("master/src/");
    let first = inside.split('/').next().unwrap_or(inside);
    first.trim_end_matches(".rs").to_owned()
}

/// The first segment of every `crate::` path outside comments and test modules.
fn crate_imports(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]\nmod tests").next().unwrap_or(text);
    let mut found = Vec::new();
    for line in code
        .lines()
        .filter(|line| !line.trim_start().starts_with("//"))
    {
        for (at, _) in line.match_indices("crate::") {
            let after = &line[at + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && !found.contains(&name) {
                found.push(name);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "**master/src**, from the bottom up:\n\n| module | what |\n|---|---|\n| `config`, `error` | flags |\n| `cluster/` | view |\n| `api`, `lib` | routes |\n";

    #[test]
    fn the_table_reads_bottom_up_and_a_lower_import_is_reported() {
        let layers = master_layers(DOC);
        assert_eq!(
            layers,
            vec![vec!["config", "error"], vec!["cluster"], vec!["api", "lib"]]
        );
        let fine = (
            "master/src/cluster/view.rs".to_owned(),
            "use crate::config::X;\n".to_owned(),
        );
        let upward = (
            "master/src/error.rs".to_owned(),
            "use crate::cluster::MembershipError;\n".to_owned(),
        );
        let in_tests = (
            "master/src/config.rs".to_owned(),
            "#[cfg(test)]\nmod tests {\n use crate::api::x;\n}".to_owned(),
        );
        let unknown = ("master/src/stray.rs".to_owned(), String::new());
        assert!(check(&layers, &[fine, in_tests]).is_empty());
        assert_eq!(check(&layers, &[upward]).len(), 1);
        assert_eq!(check(&layers, &[unknown]).len(), 1);
    }
}
