//! Citations of source files, and of the functions, types and tests beside them, in
//! a Markdown document: `` `master/src/api.rs` ``, `` `aux/src/store/evict.rs`
//! (`make_room`, `Inner::put`) `` and `` `common/src/frame.rs::tombstones_round_trip` ``.
//! A path may be shortened to its tail (`data_path/read.rs`) when exactly one file
//! ends so.

/// What the document cites that the code does not have, one line each.
pub fn check(doc: &str, files: &[String], read: impl Fn(&str) -> String) -> Vec<String> {
    let mut problems = Vec::new();
    for citation in citations(doc) {
        let path = match resolve(&citation.path, files) {
            Ok(path) => path,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let source = read(&path);
        for name in &citation.names {
            if !defines(&source, name) {
                problems.push(format!(
                    "`{name}` is not defined in {path} (cited beside `{}`)",
                    citation.path
                ));
            }
        }
    }
    problems
}

/// A cited file and the names cited with it.
#[derive(Debug, PartialEq, Eq)]
pub struct Citation {
    pub path: String,
    pub names: Vec<String>,
}

/// Every backticked `.rs` path in `doc`, with the names after `::` or in the
/// parenthesis that follows it.
pub fn citations(doc: &str) -> Vec<Citation> {
    let mut found = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find('`') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('`') else { break };
        let token = &after[..end];
        rest = &after[end + 1..];
        let Some(rs) = token.find(".rs") else {
            continue;
        };
        if token.contains(' ') {
            continue;
        }
        let path = token[..rs + 3].to_owned();
        let mut names = Vec::new();
        if let Some(test) = token[rs + 3..].strip_prefix("::") {
            names.push(test.to_owned());
        }
        let trimmed = rest.trim_start();
        if let Some(group) = trimmed.strip_prefix('(') {
            if let Some(close) = group.find(')') {
                names.extend(backticked(&group[..close]).filter(|name| is_code_name(name)));
            }
        }
        found.push(Citation { path, names });
    }
    found
}

fn backticked(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split('`').skip(1).step_by(2).map(str::to_owned)
}

/// `name`, `Type::method`, `Type<Param>`: what can be looked up as a definition.
fn is_code_name(name: &str) -> bool {
    let bare = name.split('<').next().unwrap_or(name);
    !bare.is_empty()
        && bare
            .split("::")
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_alphanumeric() || c == '_'))
        && bare
            .chars()
            .next()
            .is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// The one file `cited` names: itself, or the only file whose path ends with it.
pub fn resolve(cited: &str, files: &[String]) -> Result<String, String> {
    if files.iter().any(|file| file == cited) {
        return Ok(cited.to_owned());
    }
    let tail = format!("/{cited}");
    let matches: Vec<&String> = files.iter().filter(|file| file.ends_with(&tail)).collect();
    match matches.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!("`{cited}` does not exist")),
        many => Err(format!(
            "`{cited}` could be any of {many:?}: cite the whole path"
        )),
    }
}

/// Whether `source` defines `name` (for `Type::item`, both), as a function, type,
/// trait, constant, static, module or enum variant.
pub fn defines(source: &str, name: &str) -> bool {
    let bare = name.split('<').next().unwrap_or(name);
    bare.split("::").all(|part| defines_one(source, part))
}

fn defines_one(source: &str, name: &str) -> bool {
    const KINDS: [&str; 8] = [
        "fn", "struct", "enum", "trait", "type", "const", "static", "mod",
    ];
    const MODIFIERS: [&str; 5] = ["pub", "pub(crate)", "pub(super)", "async", "unsafe"];
    let identifier = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    source.lines().any(|line| {
        let mut words: Vec<&str> = line.split_whitespace().collect();
        while words.first().is_some_and(|word| MODIFIERS.contains(word))
            || words.starts_with(&["const", "fn"])
        {
            words.remove(0);
        }
        match words.as_slice() {
            [kind, rest, ..] if KINDS.contains(kind) => identifier(rest) == name,
            ["impl" | "impl<", ..] => line
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .any(|word| word == name),
            // An enum variant or a struct field.
            [first, ..] => {
                let after = &first[identifier(first).len()..];
                identifier(first) == name
                    && (after.is_empty() || after.starts_with(['{', '(', ',']) || after == ":")
            }
            [] => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "pub struct Inner;\nimpl Inner {\n    pub(crate) fn put(&self) {}\n}\nfn make_room() {}\n#[test]\nfn a_test_name() {}\nenum Kind {\n    Absent,\n}\n";

    #[test]
    fn citations_take_test_paths_and_parenthesised_names() {
        let doc = "See `aux/src/store/mod.rs` (`Inner::put`, `make_room`, not `--a-flag`) and\n`cli/x.rs::a_test_name`, `data_path/read.rs`.";
        assert_eq!(
            citations(doc),
            vec![
                Citation {
                    path: "aux/src/store/mod.rs".into(),
                    names: vec!["Inner::put".into(), "make_room".into()]
                },
                Citation {
                    path: "cli/x.rs".into(),
                    names: vec!["a_test_name".into()]
                },
                Citation {
                    path: "data_path/read.rs".into(),
                    names: vec![]
                },
            ]
        );
    }

    #[test]
    fn names_must_be_defined_and_paths_must_exist() {
        assert!(defines(SOURCE, "Inner::put"));
        assert!(defines(SOURCE, "make_room"));
        assert!(defines(SOURCE, "a_test_name"));
        assert!(defines(SOURCE, "Kind"));
        assert!(!defines(SOURCE, "place_missing"));
        assert!(!defines(SOURCE, "make"), "a prefix is not a definition");
        assert!(!defines(SOURCE, "Outer::put"));
        let files = vec![
            "master/src/data_path/read.rs".to_owned(),
            "aux/src/api.rs".to_owned(),
            "master/src/api.rs".to_owned(),
        ];
        assert_eq!(
            resolve("data_path/read.rs", &files),
            Ok("master/src/data_path/read.rs".into())
        );
        assert!(resolve("repair/plan.rs", &files).is_err());
        assert!(resolve("api.rs", &files).is_err(), "ambiguous");
        let problems = check("`aux/src/api.rs` (`gone`) and `nowhere.rs`", &files, |_| {
            SOURCE.to_owned()
        });
        assert_eq!(problems.len(), 2, "{problems:?}");
    }
}
