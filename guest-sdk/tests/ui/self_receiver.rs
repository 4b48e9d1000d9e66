struct Task;

impl Task {
    #[wpool_guest::task]
    fn run(&self, input: String) -> Result<String, String> {
        Ok(input)
    }
}

fn main() {}
