//! `[[tests]]`: the rule tests `portcullis check` runs.

use crate::config::raw::*;

use super::Compiler;

impl Compiler {
    pub(super) fn rule_tests(&mut self, raw: &[RawRuleTest]) -> Vec<crate::snapshot::RuleTest> {
        let mut tests = Vec::new();
        for (i, t) in raw.iter().enumerate() {
            let key = format!("tests[{i}]");
            let Some(name) = t.name.clone() else {
                self.issue(
                    format!("{key}.name"),
                    "required; name the test for the report",
                );
                continue;
            };
            let Some((method, url)) = t.request.as_deref().and_then(|r| r.split_once(' ')) else {
                self.issue(
                    format!("{key}.request"),
                    "required: \"METHOD URL\", e.g. \"GET https://crm.example.com/api/x\"",
                );
                continue;
            };
            if t.expect_status.is_none()
                && t.expect_route.is_none()
                && t.expect_upstream_target.is_none()
            {
                self.issue(
                    key.as_str(),
                    "expects nothing; set expect_status, expect_route and/or expect_upstream_target",
                );
                continue;
            }
            let claims = match &t.claims {
                None => None,
                Some(table) => match serde_json::to_value(table).and_then(serde_json::from_value) {
                    Ok(claims) => Some(claims),
                    Err(e) => {
                        self.issue(
                            format!("{key}.claims"),
                            format!("not usable as claims: {e}"),
                        );
                        continue;
                    }
                },
            };
            tests.push(crate::snapshot::RuleTest {
                name,
                method: method.to_owned(),
                url: url.trim().to_owned(),
                claims,
                expect_status: t.expect_status,
                expect_route: t.expect_route.clone(),
                expect_upstream_target: t.expect_upstream_target.clone(),
            });
        }
        tests
    }
}
